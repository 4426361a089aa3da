"""``hpctune clusters detect``: a first cluster profile from the live Slurm.

The parsing is pure: :func:`parse_records` and :func:`parse_config` read the text of
``scontrol show partition -o``, ``scontrol show node -o`` and ``scontrol show config``;
:func:`draft` turns them into a profile (a dict the schema loads) plus a comment per
field; :func:`render` writes the commented YAML. :func:`run_detect` is the only part that
runs Slurm commands.

What Slurm cannot tell (GPU memory when the Gres has no known type, the network
interface, modules, the account) is marked in the file: ``FILL IN`` on a placeholder the
user must replace, ``CHECK`` on a value to confirm. ``hpctune clusters validate`` lists
the markers left (:func:`markers`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import shlex
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field

from hpctune import gpus
from hpctune.errors import ConfigError, RunError

FILL_IN = "FILL IN"
CHECK = "CHECK"
# GPU memory written when the Gres type is unknown: the smallest common datacenter GPU
# (T4, V100-16GB), so that the planner errs on the safe side until the user fills it in.
PLACEHOLDER_GPU_MEM_GIB = 16
# max_time written for a partition whose MaxTime is UNLIMITED (hpctune needs a number).
UNLIMITED_MAX_TIME = "7-00:00:00"
COMMAND_TIMEOUT_S = 30
_NAME_OK = re.compile(r"[A-Za-z0-9_.+\-]+")  # profile.SLURM_NAME (not imported: keep it light)

# Link rate per port of an InfiniBand generation named as a node feature, GB/s.
_IB_GBPS = {"edr": 12.5, "hdr": 25.0, "ndr": 50.0, "xdr": 100.0}


def _bandwidths(network: dict, comments: dict, gpu_model: str, feats: set[str]) -> None:
    """The planner's time model needs the collective bandwidth per GPU inside a node and
    between nodes; Slurm knows neither, so derive what the GPU model and the IB feature say."""
    from hpctune.plan.timing import GPU_PEAK  # pure Python, no torch

    nvlink = next((v[2] for k, v in sorted(GPU_PEAK.items(), key=lambda kv: -len(kv[0]))
                   if gpu_model.lower().startswith(k)), 0)
    if nvlink:
        network["intra_node_gbps"] = float(nvlink)
        comments["network.intra_node_gbps"] = (f"{CHECK}: NVLink bandwidth per GPU of an SXM {gpu_model} "
                                               "(PCIe cards: 25); used for step-time estimates")
    rate = next((_IB_GBPS[f] for f in sorted(feats) if f in _IB_GBPS), None)
    if rate:
        network["inter_node_gbps"] = rate
        comments["network.inter_node_gbps"] = (f"{CHECK}: one {rate * 8:g} Gb/s port per GPU assumed: "
                                               "the node's NIC bandwidth divided by its GPUs, GB/s")


# ------------------------------------------------------------------ parsing scontrol


def parse_kv(text: str) -> dict[str, str]:
    """One ``Key=value Key=value`` record. A value runs to the next `` Key=`` (values may
    hold spaces, as in ``OS=Linux 6.1 #1 SMP``, and ``=``, as in ``CfgTRES=cpu=4,...``)."""
    keys = list(re.finditer(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/.]*)=", text))
    out: dict[str, str] = {}
    for i, m in enumerate(keys):
        end = keys[i + 1].start() if i + 1 < len(keys) else len(text)
        out[m[1]] = text[m.end():end].strip()
    return out


def parse_records(text: str) -> list[dict[str, str]]:
    """Records of ``scontrol show partition|node``, one-line (``-o``) or multi-line form:
    a record starts at a line that is not indented."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace() and records:
            records[-1].append(line.strip())
        else:
            records.append([line.strip()])
    return [parse_kv(" ".join(r)) for r in records]


def parse_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Key = value`` lines."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
    return out


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (x.strip() for x in parts) if p]


def _count(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip(), re.I)
    if not m:
        raise ValueError(text)
    return int(m[1]) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m[2].upper()]


def parse_gres(gres: str | None) -> tuple[int, list[str]]:
    """GPUs in a node's Gres and their types: ``gpu:h100:8`` -> (8, ['h100']);
    ``gpu:2`` -> (2, []); ``gpu:a100:4(S:0-1),nvme:1`` -> (4, ['a100']);
    ``(null)`` -> (0, [])."""
    if not gres or gres in ("(null)", "N/A", "none"):
        return 0, []
    total, types = 0, []
    for item in split_top(gres):
        item = re.sub(r"\(.*\)$", "", item).strip()  # (S:0-1), (IDX:0-7)
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        rest = [p for p in parts[1:] if p != "no_consume"]
        try:
            if not rest:
                count, gtype = 1, None
            elif len(rest) == 1:
                try:
                    count, gtype = _count(rest[0]), None
                except ValueError:
                    count, gtype = 1, rest[0]
            else:
                count, gtype = _count(rest[-1]), rest[0]
        except ValueError:
            continue
        total += count
        if gtype and gtype not in types:
            types.append(gtype)
    return total, types


def expand_hostlist(expr: str) -> list[str]:
    """``n[1-2],gpu[01-03,7]`` -> n1 n2 gpu01 gpu02 gpu03 gpu7 (one bracket per name)."""
    if not expr or expr in ("(null)", "N/A"):
        return []
    out = []
    for part in split_top(expr):
        m = re.fullmatch(r"(.*?)\[([^\]]+)\](.*)", part)
        if not m:
            out.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for r in ranges.split(","):
            lo, _, hi = r.partition("-")
            if not hi:
                out.append(f"{prefix}{lo}{suffix}")
                continue
            width = len(lo) if lo.startswith("0") else 0
            out += [f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1)]
    return out


def slurm_minutes(value: str | None) -> float | None:
    """Minutes in a Slurm MaxTime (``00:30:00``, ``2-00:00:00``); None for UNLIMITED/NONE."""
    from hpctune.timefmt import parse_minutes
    if value is None or value.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", ""):
        return None
    return parse_minutes(value, "scontrol show partition", "MaxTime")


def _int(value: str | None, default: int | None = None) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return default


# ------------------------------------------------------------------ the cluster, parsed


@dataclass(frozen=True, order=True)
class Shape:
    """The hardware of one node, as Slurm advertises it."""

    gpus: int
    gpu_type: str  # Gres type; "" when untyped, "a,b" when several
    cpus: int
    ram_mb: int

    def describe(self) -> str:
        gpu = (f"{self.gpus}x gpu:{self.gpu_type}" if self.gpu_type else f"{self.gpus}x gpu (untyped)") \
            if self.gpus else "no GPUs"
        return f"{gpu}, {self.cpus} CPUs, {self.ram_mb} MB RAM"


@dataclass
class PartitionInfo:
    name: str
    nodes: list[str]
    total_nodes: int
    max_nodes: str  # raw: a number or UNLIMITED
    max_time: str  # raw: Slurm time or UNLIMITED
    default: bool
    state: str
    oversubscribe: str
    preempt_mode: str
    allow_accounts: str
    shapes: Counter = field(default_factory=Counter)  # Shape -> node count

    @property
    def shape(self) -> Shape | None:
        """The most common node shape (ties: the smaller one)."""
        if not self.shapes:
            return None
        return sorted(self.shapes.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]

    @property
    def has_gpus(self) -> bool:
        return bool(self.shape and self.shape.gpus > 0)


@dataclass
class Cluster:
    name: str
    slurm_version: str
    config: dict[str, str]
    partitions: list[PartitionInfo]
    features: dict[str, set[str]]  # partition -> node features


def parse_cluster(partitions_text: str, nodes_text: str, config_text: str = "") -> Cluster:
    """Everything ``draft`` needs, from the three commands' text."""
    config = parse_config(config_text)
    node_recs = [r for r in parse_records(nodes_text) if r.get("NodeName")]
    by_name = {r["NodeName"]: r for r in node_recs}
    parts: list[PartitionInfo] = []
    features: dict[str, set[str]] = {}
    for rec in parse_records(partitions_text):
        name = rec.get("PartitionName")
        if not name:
            continue
        members = [r["NodeName"] for r in node_recs if name in r.get("Partitions", "").split(",")]
        if not members:  # Slurm without a Partitions= field on nodes: expand Nodes=
            members = [n for n in expand_hostlist(rec.get("Nodes", "")) if n in by_name]
        p = PartitionInfo(
            name=name, nodes=members,
            total_nodes=_int(rec.get("TotalNodes"), len(members)) or len(members),
            max_nodes=rec.get("MaxNodes", "UNLIMITED"), max_time=rec.get("MaxTime", "UNLIMITED"),
            default=rec.get("Default", "NO").upper() == "YES", state=rec.get("State", "UP").upper(),
            oversubscribe=rec.get("OverSubscribe", "NO").upper(), preempt_mode=rec.get("PreemptMode", "OFF").upper(),
            allow_accounts=rec.get("AllowAccounts", "ALL"))
        feats: set[str] = set()
        for n in members:
            node = by_name[n]
            count, types = parse_gres(node.get("Gres"))
            cpus = _int(node.get("CPUEfctv")) or _int(node.get("CPUTot")) or 1
            p.shapes[Shape(count, ",".join(types), cpus, _int(node.get("RealMemory"), 0) or 0)] += 1
            for f in (node.get("AvailableFeatures") or "").split(","):
                if f and f != "(null)":
                    feats.add(f)
        features[name] = feats
        parts.append(p)
    return Cluster(name=config.get("ClusterName", ""), slurm_version=config.get("SLURM_VERSION", ""),
                   config=config, partitions=parts, features=features)


# ------------------------------------------------------------------ the draft profile


@dataclass
class Draft:
    """A detected profile: ``data`` loads with the schema as is; ``comments`` holds the
    end-of-line comment for a dotted field path (those starting with FILL IN / CHECK are
    markers for the user); ``header`` the comment block at the top."""

    data: dict
    comments: dict[str, str]
    header: list[str]
    partition: str  # the partition whose nodes `node` describes
    commented: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # section -> (line, comment)

    def todo(self) -> list[str]:
        return [f"{kind.lower()}: {path} ({text})" for path, kind, text in _markers_of(self.comments)]


def _markers_of(comments: dict[str, str]):
    for path, text in comments.items():
        for kind in (FILL_IN, CHECK):
            if text.startswith(kind + ":"):
                yield path, kind, text[len(kind) + 1:].strip()


def _gib(mb: int) -> float:
    """RealMemory (MiB) in GiB, rounded down to 0.01 so the profile never claims more."""
    return math.floor(mb / 1024 * 100) / 100


def _choose(cluster: Cluster, wanted: str | None) -> PartitionInfo:
    parts = cluster.partitions
    if not parts:
        raise RunError("Slurm reports no partitions")
    if wanted is not None:
        p = next((x for x in parts if x.name == wanted), None)
        if p is None:
            raise ConfigError("--partition", "", f"no partition {wanted!r} on this cluster "
                                                 f"(partitions: {', '.join(x.name for x in parts)})")
        if p.shape is None:
            raise ConfigError("--partition", "", f"partition {wanted!r} has no nodes")
        return p
    usable = [x for x in parts if x.shape is not None and x.state == "UP"] or [x for x in parts if x.shape]
    if not usable:
        raise RunError("Slurm reports no nodes in any partition")
    default = next((x for x in usable if x.default), None)
    if default is not None and default.has_gpus:
        return default
    gpu = [x for x in usable if x.has_gpus]
    if gpu:
        return max(gpu, key=lambda x: (x.total_nodes, -gpu.index(x)))
    return default or usable[0]


def _yaml_str(value: str) -> str:
    """A YAML scalar for a string: plain when it reads back as the same string, else
    single-quoted (double-quoted, JSON style, if it holds a line break)."""
    from hpctune import yamlfile
    if "#" not in value and value == value.strip() and value:
        try:
            if yamlfile.loads(f"k: {value}") == {"k": value}:
                return value
        except Exception:
            pass
    if "\n" in value or "\r" in value:
        return json.dumps(value)
    return "'" + value.replace("'", "''") + "'"


def draft(cluster: Cluster, *, partition: str | None = None, name: str | None = None,
          gpu_model: str | None = None, gpu_mem_gib: float | None = None,
          venv: str | None = None, today: str | None = None, hpctune_version: str = "") -> Draft:
    """The profile for the nodes of one partition (see module doc).

    partition: whose nodes ``node`` describes; default: Slurm's default partition if it
    has GPUs, else the GPU partition with the most nodes. Every partition whose nodes have
    the same shape is listed under ``partitions``; the others are named in the header.
    gpu_model / gpu_mem_gib: what the user knows (``--gpu-model``, ``--gpu-mem-gib``).
    venv: a virtual environment to activate on the nodes (the one detect ran from).
    """
    chosen = _choose(cluster, partition)
    shape = chosen.shape
    assert shape is not None
    comments: dict[str, str] = {}
    commented: dict[str, list[tuple[str, str]]] = {}

    # --- name
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.+\-]+", "-", cluster.name).strip("-") or "my-cluster"
    elif not _NAME_OK.fullmatch(name):
        raise ConfigError("--name", "", f"{name!r} is not a valid profile name (letters, digits and _ . + - only)")

    # --- partitions with the same nodes
    group = [chosen] + [p for p in cluster.partitions if p is not chosen and p.state == "UP"
                        and set(p.shapes) == {shape} and _NAME_OK.fullmatch(p.name)]
    part_rows = []
    for i, p in enumerate(group):
        mn = _int(p.max_nodes)
        count = p.total_nodes or len(p.nodes)
        max_nodes = min(mn, count) if mn else count
        mt = slurm_minutes(p.max_time)
        row = {"name": p.name, "max_nodes": max(1, max_nodes), "max_time": p.max_time if mt is not None else UNLIMITED_MAX_TIME,
               "default": p is chosen}
        part_rows.append(row)
        if mn:
            comments[f"partitions[{i}].max_nodes"] = (f"MaxNodes={p.max_nodes}; the partition has {count} nodes"
                                                      if mn != max_nodes else f"MaxNodes={p.max_nodes}")
        else:
            comments[f"partitions[{i}].max_nodes"] = f"MaxNodes={p.max_nodes}: the partition's {count} nodes"
        if mt is None:
            comments[f"partitions[{i}].max_time"] = (f"{CHECK}: MaxTime={p.max_time}; hpctune needs a limit: "
                                                     f"7 days written, set the longest you will ask for")
        else:
            comments[f"partitions[{i}].max_time"] = "MaxTime (D-HH:MM:SS)"
        if p is chosen:
            comments[f"partitions[{i}].default"] = ("Slurm's default partition (Default=YES)" if p.default
                                                    else "used when a recipe names no partition")
        else:
            comments[f"partitions[{i}].default"] = "Slurm's default partition" if p.default else ""

    # --- node
    gtype = shape.gpu_type
    node: dict = {"gpus_per_node": shape.gpus}
    known_table = False
    if shape.gpus == 0:
        node["gpu_model"] = "none"
        comments["node.gpus_per_node"] = "no GPU Gres on these nodes: CPU only"
    else:
        comments["node.gpus_per_node"] = f"Gres=gpu:{gtype + ':' if gtype else ''}{shape.gpus}"
        match = gpus.from_gres_type(gtype if "," not in gtype else None)
        if gpu_model is not None:
            user = gpus.lookup(gpu_model)
            node["gpu_model"] = gpu_model
            comments["node.gpu_model"] = "from --gpu-model"
            mem = gpu_mem_gib if gpu_mem_gib is not None else (user.memory_gib if user else None)
            if mem is None:
                node["gpu_mem_gib"] = PLACEHOLDER_GPU_MEM_GIB
                comments["node.gpu_mem_gib"] = (f"{FILL_IN}: {gpu_model!r} is not in hpctune's GPU table: the GiB of "
                                                 f"one GPU; {PLACEHOLDER_GPU_MEM_GIB} is a placeholder")
                known_table = True
            else:
                node["gpu_mem_gib"] = mem
                comments["node.gpu_mem_gib"] = "from --gpu-mem-gib" if gpu_mem_gib is not None else f"{gpu_model} in hpctune's GPU table"
        elif match.model is not None:
            node["gpu_model"] = match.model.name
            comments["node.gpu_model"] = f"from the Gres type {gtype!r}"
            if gpu_mem_gib is not None:
                node["gpu_mem_gib"] = gpu_mem_gib
                comments["node.gpu_mem_gib"] = "from --gpu-mem-gib"
            else:
                node["gpu_mem_gib"] = match.model.memory_gib
                if match.memory_certain:
                    comments["node.gpu_mem_gib"] = f"GiB of one {match.model.name} (hpctune's GPU table)"
                else:
                    sizes = ", ".join(f"{v} ({gpus.KNOWN[v].memory_gib:g} GiB)" for v in match.model.variants)
                    comments["node.gpu_mem_gib"] = (f"{CHECK}: Slurm says {gtype!r}, which also comes as {sizes}: "
                                                    f"if so, change gpu_model and gpu_mem_gib")
                    known_table = True
        else:
            node["gpu_model"] = "unknown"
            why = (f"the Gres type {gtype!r} is not in hpctune's GPU table" if gtype and "," not in gtype
                   else f"the nodes mix GPU types {gtype}" if gtype else "the Gres has no GPU type")
            comments["node.gpu_model"] = f"{FILL_IN}: {why}: name it, e.g. h100, a100-40g, l40s, t4; table below"
            if gpu_mem_gib is not None:
                node["gpu_mem_gib"] = gpu_mem_gib
                comments["node.gpu_mem_gib"] = "from --gpu-mem-gib"
            else:
                node["gpu_mem_gib"] = PLACEHOLDER_GPU_MEM_GIB
                comments["node.gpu_mem_gib"] = (f"{FILL_IN}: GPU model unknown: the GiB of one GPU; "
                                                f"{PLACEHOLDER_GPU_MEM_GIB} is a placeholder")
            known_table = True
    node["cpus_per_node"] = shape.cpus
    comments["node.cpus_per_node"] = f"CPUTot={shape.cpus}: the CPUs Slurm hands out per node"
    node["ram_gib"] = max(_gib(shape.ram_mb), 0.1)
    comments["node.ram_gib"] = f"RealMemory={shape.ram_mb} MB"
    if shape.ram_mb < 1024:  # Slurm's default RealMemory is 1: the site did not configure it
        comments["node.ram_gib"] = f"{FILL_IN}: RealMemory={shape.ram_mb} MB: Slurm does not know the memory; GiB of one node"
    node_lines = [("local_scratch: /local/scratch", "node-local fast disk, if any (NVMe offload, caches)")]
    if known_table:
        node_lines.append(("", "GPU models hpctune knows (gpu_model: GiB of one GPU):"))
        names = [f"{g.name}: {g.memory_gib:g}" for g in gpus.KNOWN.values()]
        for i in range(0, len(names), 6):
            node_lines.append(("", "  " + ", ".join(names[i:i + 6])))
        node_lines.append(("", "Another model: set bf16 / flash_attention_2 (true from Ampere on)."))
    commented["node"] = node_lines

    # --- the rest
    feats = cluster.features.get(chosen.name, set())
    ib = bool({f.lower() for f in feats} & {"ib", "infiniband", "edr", "hdr", "ndr", "xdr"})
    network = {"infiniband": ib}
    comments["network.infiniband"] = (f"{CHECK}: the nodes have feature(s) {', '.join(sorted(feats))}" if ib else
                                      "true if the nodes have InfiniBand (ls /sys/class/infiniband on a node)")
    _bandwidths(network, comments, node.get("gpu_model", "none"), {f.lower() for f in feats})
    commented["network"] = [
        ("socket_ifname: ib0", "NCCL_SOCKET_IFNAME: the nodes' fast interface (ip -br link on a node); "
                               "set it for multi-node jobs"),
        ("ib_hca: mlx5", "NCCL_IB_HCA, with infiniband: true"),
    ]
    software: dict = {"modules": []}
    comments["software.modules"] = "environment modules to load, e.g. [CUDA/12.4, NCCL/2.21] (module avail)"
    if venv:
        software["setup"] = [f"source {shlex.quote(venv + '/bin/activate')}"]
        comments["software.setup[0]"] = f"{CHECK}: the venv detect ran from; the nodes must see this path"
    else:
        software["setup"] = []
        comments["software.setup"] = "shell lines run before training, e.g. source \"$HOME/venvs/hpctune/bin/activate\""
    preempt = chosen.preempt_mode if chosen.preempt_mode not in ("", "OFF") else cluster.config.get("PreemptMode", "OFF").upper()
    cancel = preempt.startswith("CANCEL")
    preemption = {"mode": "cancel" if cancel else "requeue", "max_attempts": 3, "signal_seconds": 90}
    comments["preemption.mode"] = (f"PreemptMode={preempt}: " + (
        "preempted jobs are cancelled; hpctune submits again" if cancel else
        "jobs stopped by the time limit or a preemption are requeued (sbatch --requeue)"))
    comments["preemption.max_attempts"] = "attempts in all, the first included"
    comments["preemption.signal_seconds"] = "USR2 this long before the time limit: checkpoint, then requeue"
    exclusive = chosen.oversubscribe.startswith("EXCLUSIVE")
    comments["exclusive"] = (f"OverSubscribe={chosen.oversubscribe}: " +
                             ("Slurm gives whole nodes anyway" if exclusive else "jobs share nodes; true asks for whole nodes"))
    enforce = cluster.config.get("AccountingStorageEnforce", "none").lower()
    account_note = ("--account: the site enforces associations: set yours if it is not your default one"
                    if "assoc" in enforce else "--account, if the site requires one")
    if chosen.allow_accounts not in ("ALL", ""):
        account_note += f" (partition allows: {chosen.allow_accounts})"
    commented["account"] = [("account: my-project", account_note + " (sacctmgr show assoc user=$USER)"),
                            ("qos: normal", "--qos, if the site uses QoS")]
    commented["runs_dir"] = [("runs_dir: hpctune-runs", "where run bundles go: on a filesystem the nodes share")]

    model = node.get("gpu_model", "none")
    desc = (f"{chosen.name}: {chosen.total_nodes} nodes of "
            + (f"{shape.gpus}x {model if model != 'unknown' else 'GPU (model unknown)'}" if shape.gpus else "CPUs only")
            + f", {shape.cpus} CPUs, {node['ram_gib']:g} GiB RAM")
    data = {
        "name": name, "description": desc, "scheduler": "slurm", "partitions": part_rows,
        "exclusive": exclusive, "node": node, "network": network, "software": software,
        "preemption": preemption, "rendezvous": "static",
    }
    comments["partitions"] = "partitions whose nodes all look like `node` below"
    comments["rendezvous"] = "torch rendezvous between nodes: static | c10d"

    # --- header
    when = today or _dt.date.today().isoformat()
    by = f"hpctune {hpctune_version} " if hpctune_version else ""
    header = [
        f"Cluster profile for Slurm cluster {cluster.name or '?'!r}, written by `hpctune clusters detect`",
        f"({by}on {when}, Slurm {cluster.slurm_version or '?'}).",
        "",
        f"Lines marked {FILL_IN} hold a placeholder you must replace; lines marked {CHECK} hold a",
        "value Slurm could not confirm. Fix the value, delete the marker, and run",
        "  hpctune clusters validate FILE",
        "which lists the markers left. Then copy the file to ~/.config/hpctune/clusters/.",
        "",
    ]
    nodes_desc = f"{len(chosen.nodes)} nodes" if len(chosen.nodes) != 1 else "1 node"
    header.append(f"`node` describes the nodes of partition {chosen.name} ({nodes_desc}: {shape.describe()}).")
    if len(chosen.shapes) > 1:
        header.append(f"{CHECK}: partition {chosen.name} mixes node kinds; `node` is the most common one:")
        for s, n in sorted(chosen.shapes.items(), key=lambda kv: (-kv[1], kv[0])):
            header.append(f"  {n} node(s): {s.describe()}")
        header.append("  Jobs may land on the others: set `constraint` to pick one kind.")
        comments["node"] = f"{CHECK}: partition {chosen.name} mixes node kinds (see the top of the file)"
    others = [p for p in cluster.partitions if p not in group]
    if others:
        header.append("Other partitions (one profile describes one kind of node; write one each with")
        header.append("`hpctune clusters detect --partition NAME -o NAME.yaml`):")
        width = max(len(p.name) for p in others)
        for p in others:
            what = "; ".join(f"{n} node{'s' if n != 1 else ''} of {s.describe()}" for s, n in sorted(p.shapes.items(), key=lambda kv: (-kv[1], kv[0]))) or "no nodes"
            state = "" if p.state == "UP" else f" [{p.state}]"
            header.append(f"  {p.name.ljust(width)}  {what}; MaxTime {p.max_time}{state}")
    return Draft(data=data, comments=comments, header=header, partition=chosen.name, commented=commented)


# ------------------------------------------------------------------ rendering

_COL = 28  # comments start here, as in the example profiles


def _line(indent: int, text: str, comment: str = "") -> str:
    left = " " * indent + text
    if not comment:
        return left
    return f"{left.ljust(_COL - 1)} # {comment}" if len(left) < _COL - 1 else f"{left}  # {comment}"


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) else f"{value}"
    if isinstance(value, int):
        return str(value)
    return _yaml_str(str(value))


def render(d: Draft) -> str:
    """The commented YAML text of a draft (stable field order)."""
    c = d.comments
    out = [("# " + h).rstrip() for h in d.header]
    data = d.data

    def commented(section: str, indent: int):
        for text, note in d.commented.get(section, []):
            out.append(_line(indent, f"# {text}", note) if text else " " * indent + f"# {note}")

    def mapping(prefix: str, m: dict, indent: int):
        for k, v in m.items():
            path = f"{prefix}.{k}" if prefix else k
            if isinstance(v, list):
                if not v:
                    out.append(_line(indent, f"{k}: []", c.get(path, "")))
                    continue
                out.append(_line(indent, f"{k}:", c.get(path, "")))
                for i, item in enumerate(v):
                    out.append(_line(indent + 2, f"- {_scalar(item)}", c.get(f"{path}[{i}]", "")))
            else:
                out.append(_line(indent, f"{k}: {_scalar(v)}", c.get(path, "")))

    for key in ("name", "description", "scheduler"):
        out.append(_line(0, f"{key}: {_scalar(data[key])}", c.get(key, "")))
    out.append(_line(0, "partitions:", c.get("partitions", "")))
    for i, p in enumerate(data["partitions"]):
        for j, (k, v) in enumerate(p.items()):
            lead = "  - " if j == 0 else "    "
            value = json.dumps(v) if k == "max_time" else _scalar(v)
            out.append(_line(0, f"{lead}{k}: {value}", c.get(f"partitions[{i}].{k}", "")))
    commented("account", 0)
    out.append(_line(0, f"exclusive: {_scalar(data['exclusive'])}", c.get("exclusive", "")))
    for section in ("node", "network", "software", "preemption"):
        out.append(_line(0, f"{section}:", c.get(section, "")))
        mapping(section, data[section], 2)
        commented(section, 2)
    out.append(_line(0, f"rendezvous: {_scalar(data['rendezvous'])}", c.get("rendezvous", "")))
    commented("runs_dir", 0)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------ markers (validate)


def markers(text: str) -> list[tuple[str, str, str]]:
    """(field path, FILL IN | CHECK, note) for each marker left on a value line of a
    profile's text. Commented-out lines are skipped; the path is found from indentation
    (block-style YAML, as detect writes it)."""
    found = []
    stack: list[tuple[int, str]] = []  # (indent, path segment): "node", "[0]", "max_time"
    index: dict[str, int] = {}  # list path -> index of its last item

    def joined() -> str:
        return "".join(seg if seg.startswith("[") or i == 0 else "." + seg for i, (_, seg) in enumerate(stack))

    for line in text.splitlines():
        m = re.match(r"^( *)(- +)?(?:([A-Za-z_][\w\-]*)\s*:(?=\s|$))?", line)
        if not m or not (m[2] or m[3]):
            continue
        indent = len(m[1])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m[2]:  # a list item of the enclosing key
            parent = joined()
            index[parent] = index.get(parent, -1) + 1
            stack.append((indent, f"[{index[parent]}]"))
            indent += len(m[2])
        if m[3]:
            stack.append((indent, m[3]))
        mark = re.search(r"\s#\s*(FILL IN|CHECK)\s*:\s*(.*)$", line)
        if mark:
            found.append((joined(), mark[1], mark[2].strip()))
    return found


# ------------------------------------------------------------------ the live cluster


def _scontrol(args: list[str], timeout: float) -> str:
    exe = shutil.which("scontrol")
    if exe is None:
        raise RunError("cannot reach Slurm: scontrol not found on PATH (run this on a login node of the cluster)")
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        first = next((ln.strip() for ln in err.splitlines() if ln.strip()), "")
        raise RunError(f"cannot reach Slurm: `scontrol {' '.join(args)}` gave no answer in {timeout:g} s"
                       + (f" ({first})" if first else "")) from None
    if proc.returncode != 0:
        first = next((ln.strip() for ln in proc.stderr.splitlines() if ln.strip()), f"scontrol exited {proc.returncode}")
        raise RunError(f"cannot reach Slurm: {first}")
    return proc.stdout


def run_detect(timeout: float = COMMAND_TIMEOUT_S) -> Cluster:
    """Read the live Slurm (scontrol show config / partition / node)."""
    config = _scontrol(["show", "config"], timeout)
    partitions = _scontrol(["show", "partition", "-o"], timeout)
    nodes = _scontrol(["show", "node", "-o"], timeout)
    return parse_cluster(partitions, nodes, config)
