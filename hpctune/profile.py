"""Cluster profiles: one YAML file per cluster, describing its hardware and how to run there.

Profiles are found by name in, in order: ``$HPCTUNE_CLUSTERS``, ``~/.config/hpctune/clusters``
and the shipped ``clusters/`` folder; or given as a path to a ``.yaml`` file.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hpctune import resources, schema, slurm_options, yamlfile
from hpctune.errors import ConfigError
from hpctune.schema import doc
from hpctune.timefmt import parse_minutes

# Values written into #SBATCH lines (which no shell quotes) must be plain identifiers, and
# no token a command reads as a word of its own may start with '-' (it would be an option).
SLURM_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.+\-]{0,127}"
SLURM_NAME_DOC = "letters, digits and _ . + - only, not starting with '-', at most 128"
SLURM_EXPR = r"[A-Za-z0-9_!(\[][A-Za-z0-9_.+\-&|!:,\[\]()*]{0,511}"
SLURM_EXPR_DOC = "a Slurm feature expression: letters, digits and _ . + - & | ! : , [ ] ( ) *, not starting with '-'"
ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# `module load NAME`: Lmod/Tcl module names such as CUDA/12.1.1, gcc@12, Stages/2024.
MODULE = r"[A-Za-z0-9_][A-Za-z0-9_.+/@:~=\-]{0,255}"
MODULE_DOC = "a module name such as CUDA/12.1.1: letters, digits and _ . + / @ : ~ = -, not starting with '-'"
# apptainer's positional image argument / pyxis' --container-image: docker://..., a .sif
# path, enroot's nvcr.io#nvidia/pytorch:24.01-py3.
IMAGE = r"[A-Za-z0-9_./~][A-Za-z0-9_.:/@+#~=\-]{0,511}"
IMAGE_DOC = "an image such as docker://repo/name:tag or /path/image.sif: letters, digits and _ . : / @ + # ~ = -, not starting with '-'"
# SRC[:DST[:ro|rw]], absolute paths; no ',' (pyxis separates mounts with commas).
_MOUNT_PATH = r"/[A-Za-z0-9_.+@=~/\-]*"
MOUNT = rf"{_MOUNT_PATH}(?::{_MOUNT_PATH})?(?::(?:ro|rw))?"
MOUNT_DOC = "SRC[:DST[:ro|rw]] with absolute paths of letters, digits and _ . + @ = ~ / - (no commas or spaces)"
IFNAMES = r"[A-Za-z0-9_.,^=:\-]{1,256}"


@dataclass(kw_only=True)
class Partition:
    name: str = field(metadata=doc("Slurm partition name", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    max_nodes: int = field(default=1, metadata=doc("most nodes one job may use", min=1))
    max_time: str = field(default="1-00:00:00", metadata=doc("longest time limit, Slurm format (D-HH:MM:SS)"))
    default: bool = field(default=False, metadata=doc("used when a recipe names no partition"))


@dataclass(kw_only=True)
class Node:
    gpus_per_node: int = field(default=0, metadata=doc("GPUs in one node (0: CPU only)", min=0, max=64))
    gpu_model: str = field(default="none", metadata=doc("GPU model, e.g. h100, a100, a100-40g, t4"))
    gpu_mem_gib: float = field(default=0.0, metadata=doc("memory of one GPU, GiB", min=0))
    cpus_per_node: int = field(default=1, metadata=doc("CPU cores (Slurm CPUs) in one node", min=1))
    ram_gib: float = field(default=1.0, metadata=doc("CPU memory of one node, GiB", min=0.1))
    local_scratch: str | None = field(default=None, metadata=doc("node-local fast disk (NVMe offload, caches)", path=True))
    bf16: bool | None = field(default=None, metadata=doc("GPU supports bf16; unset: known from gpu_model"))
    flash_attention_2: bool | None = field(default=None, metadata=doc("GPU supports FlashAttention-2; unset: from gpu_model"))


@dataclass(kw_only=True)
class Network:
    socket_ifname: str | None = field(default=None, metadata=doc("NCCL_SOCKET_IFNAME, e.g. ib0", pattern=IFNAMES, pattern_doc="an interface list such as ib0 or ^lo,docker"))
    gloo_socket_ifname: str | None = field(default=None, metadata=doc("GLOO_SOCKET_IFNAME; unset: same as socket_ifname", pattern=IFNAMES, pattern_doc="an interface list such as ib0"))
    infiniband: bool = field(default=False, metadata=doc("use InfiniBand (NCCL_IB_DISABLE=0)"))
    ib_hca: str | None = field(default=None, metadata=doc("NCCL_IB_HCA, e.g. mlx5_0,mlx5_1 or =mlx5_0:1", pattern=IFNAMES, pattern_doc="an HCA list such as mlx5_0,mlx5_1"))
    hostname_suffix: str = field(default="", metadata=doc("appended to the head node's name for its address (JSC: 'i')", pattern=r"[A-Za-z0-9.\-]{0,64}", pattern_doc="letters, digits, '.' and '-', at most 64"))
    nccl_env: dict[str, str] = field(default_factory=dict, metadata=doc("extra NCCL_* / other variables exported on every node (data: exported quoted, never evaluated; names hpctune, Slurm, bash or the loader use are refused, and so are secrets)"))
    intra_node_gbps: float | None = field(default=None, metadata=doc("collective bandwidth per GPU inside a node, GB/s (NVLink; PCIe ~25); unset: from gpu_model. For step-time estimates", min=0.1))
    offline: bool = field(default=False, metadata=doc("compute nodes cannot reach the internet: jobs run with HF_HUB_OFFLINE, HF_DATASETS_OFFLINE and TRANSFORMERS_OFFLINE (models and data from cache.hf_home, filled by `hpctune prepare`; `check` warns and `submit` refuses without --force when they are not there), trackers log offline (`hpctune status` shows the sync command); `hpctune doctor` finds out"))
    inter_node_gbps: float | None = field(default=None, metadata=doc("network bandwidth per GPU between nodes, GB/s (the node's NICs / its GPUs; NDR 400 Gb/s = 50); unset: 12.5. For step-time estimates", min=0.1))


@dataclass(kw_only=True)
class Container:
    image: str = field(metadata=doc("container image (pyxis: docker://..., apptainer: a .sif path)", pattern=IMAGE, pattern_doc=IMAGE_DOC))
    runtime: Literal["pyxis", "apptainer"] = field(default="pyxis", metadata=doc("how the image is run"))
    mounts: list[str] = field(default_factory=list, metadata=doc("bind mounts, SRC:DST", pattern=MOUNT, pattern_doc=MOUNT_DOC))


@dataclass(kw_only=True)
class Software:
    modules: list[str] = field(default_factory=list, metadata=doc("environment modules to load, in order", pattern=MODULE, pattern_doc=MODULE_DOC))
    setup: list[str] = field(default_factory=list, metadata=doc("shell lines run before training (e.g. 'source ~/venv/bin/activate'); TRUSTED CODE, run as written, like your .bashrc: read them before using a profile from someone else", max_len=4096))
    container: Container | None = field(default=None, metadata=doc("run inside a container instead of modules"))


@dataclass(kw_only=True)
class Cache:
    hf_home: str | None = field(default=None, metadata=doc("shared Hugging Face cache (HF_HOME) every node reads: models, tokenizers, datasets and the data hpctune tokenized; `hpctune prepare` fills it. Unset: each node's default (~/.cache/huggingface)", pattern=r"~?/[A-Za-z0-9_.,:=@+/\-]*", pattern_doc="an absolute path (or ~/...) of plain characters"))
    compile_dir: str | None = field(default=None, metadata=doc("node-local folder for compile caches (TORCH_EXTENSIONS_DIR, TRITON_CACHE_DIR): one subfolder per job and node, removed when it ends. Unset: node.local_scratch, else /tmp", pattern=r"~?/[A-Za-z0-9_.,:=@+/\-]*", pattern_doc="an absolute path (or ~/...) of plain characters"))
    extensions_dir: str | None = field(default=None, metadata=doc("shared folder of pre-built DeepSpeed ops: `hpctune prepare` builds them there; each job copies them into its node-local compile folder and adds those it had to build. Unset: <hf_home>/hpctune-extensions, else ~/.cache/hpctune/torch_extensions", pattern=r"~?/[A-Za-z0-9_.,:=@+/\-]*", pattern_doc="an absolute path (or ~/...) of plain characters"))

    def home(self) -> str | None:
        return os.path.expanduser(self.hf_home) if self.hf_home else None

    def extensions(self) -> str | None:
        """The shared folder of pre-built ops; None: the node's ~/.cache/hpctune/torch_extensions
        (compile_cache.DEFAULT_SHARED, expanded on the node)."""
        if self.extensions_dir:
            return os.path.expanduser(self.extensions_dir)
        if self.hf_home:
            return os.path.join(self.home(), "hpctune-extensions")
        return None


@dataclass(kw_only=True)
class Preemption:
    mode: Literal["requeue", "cancel", "none"] = field(default="requeue", metadata=doc("what the cluster does to a preempted job: requeue it, cancel it (hpctune submits again), or no preemption"))
    max_attempts: int = field(default=3, metadata=doc("attempts in all, the first included", min=1, max=100))
    signal_seconds: int = field(default=90, metadata=doc("warn (USR2) this long before the time limit", min=10, max=3600))


@dataclass(kw_only=True)
class Watchdog:
    enabled: bool = field(default=True, metadata=doc("end an attempt whose ranks stopped advancing (a hang), with every rank's stack in the run folder"))
    minutes: float | None = field(default=None, metadata=doc("no step for this long is a hang; unset: factor x the longest step, save or evaluation seen, never below floor_minutes", min=0.1, max=10080))
    floor_minutes: float = field(default=20.0, metadata=doc("the shortest limit when it comes from the step times (also covers the first step)", min=0.1, max=10080))
    factor: float = field(default=4.0, metadata=doc("limit = factor x the longest gap between two heartbeats seen", min=1.0, max=100))


RETRY_CAUSES = ("preempted", "node_failure", "nccl", "hang")


@dataclass(kw_only=True)
class Retry:
    causes: list[Literal["preempted", "node_failure", "nccl", "hang"]] = field(default_factory=lambda: list(RETRY_CAUSES), metadata=doc("causes retried (transient ones); out of memory, errors in the training or recipe and cancels never are"))
    max_retries: int = field(default=2, metadata=doc("failed attempts retried per run (continuations after a time limit are not counted); preemption.max_attempts still bounds all attempts", min=0, max=100))
    exclude_failing_node: bool = field(default=True, metadata=doc("resubmit with --exclude of the node the failure points at"))
    on_oom: Literal["stop", "replan"] = field(default="stop", metadata=doc("out of memory: stop with the planner's advice, or re-render with the next layout that fits with more headroom"))


@dataclass(kw_only=True)
class Verified:
    date: str = field(default="", metadata=doc("when `hpctune doctor` last proved this profile on the cluster", pattern=r"[0-9T:. \-]{0,32}", pattern_doc="a date such as 2026-12-02 06:30:00"))
    job_id: str = field(default="", metadata=doc("the probe job", pattern=r"(\d{1,12}(_\d{1,9})?)?", pattern_doc="a Slurm job id"))
    nodes: int = field(default=1, metadata=doc("nodes the probe ran on", min=1))
    passed: bool = field(default=False, metadata=doc("every check passed"))
    checks: dict[str, str] = field(default_factory=dict, metadata=doc("each check's result and figure"))


@dataclass(kw_only=True)
class ClusterProfile:
    name: str = field(metadata=doc("profile name", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    description: str = field(default="", metadata=doc("one line for 'hpctune clusters'"))
    scheduler: Literal["slurm", "local"] = field(default="slurm", metadata=doc("slurm, or local: this machine, no scheduler"))
    partitions: list[Partition] = field(default_factory=list, metadata=doc("partitions jobs may use"))
    account: str | None = field(default=None, metadata=doc("Slurm account (--account)", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    qos: str | None = field(default=None, metadata=doc("Slurm QoS (--qos)", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    constraint: str | None = field(default=None, metadata=doc("Slurm node features (--constraint)", pattern=SLURM_EXPR, pattern_doc=SLURM_EXPR_DOC))
    reservation: str | None = field(default=None, metadata=doc("Slurm reservation", pattern=SLURM_NAME, pattern_doc=SLURM_NAME_DOC))
    exclusive: bool = field(default=True, metadata=doc("ask for whole nodes (--exclusive)"))
    node: Node = field(default_factory=Node, metadata=doc("hardware of one node"))
    network: Network = field(default_factory=Network, metadata=doc("interconnect settings"))
    software: Software = field(default_factory=Software, metadata=doc("modules, set-up lines or container"))
    preemption: Preemption = field(default_factory=Preemption, metadata=doc("time limits and preemption"))
    watchdog: Watchdog = field(default_factory=Watchdog, metadata=doc("the hang watchdog"))
    retry: Retry = field(default_factory=Retry, metadata=doc("what happens after a failed attempt, per cause"))
    cache: Cache = field(default_factory=Cache, metadata=doc("Hugging Face cache, offline nodes, compile caches"))
    rendezvous: Literal["static", "c10d"] = field(default="static", metadata=doc("torch rendezvous between nodes"))
    port_base: int = field(default=20000, metadata=doc("rendezvous port = port_base + job id % 10000", min=1024, max=55535))
    sbatch_extra: dict[str, str] = field(default_factory=dict, metadata=doc("extra #SBATCH options, e.g. {mail-type: END}", pattern=r"[A-Za-z0-9_.,:=@+/\-]*", pattern_doc="a plain Slurm option value (no spaces or quotes)"))
    verified: Verified | None = field(default=None, metadata=doc("written by `hpctune doctor`: what it proved, when"))
    runs_dir: str = field(default="hpctune-runs", metadata=doc("where run bundles go (shared filesystem); relative to the working directory", path=True))

    # --- derived, read-only conveniences -------------------------------------------
    source: str = field(default="", metadata=doc("file this profile was loaded from (set by the loader)"))

    def partition(self, name: str | None) -> Partition | None:
        """The named partition, or the default one (first marked default, else the first)."""
        if name is None:
            defaults = [p for p in self.partitions if p.default]
            return (defaults or self.partitions or [None])[0]
        return next((p for p in self.partitions if p.name == name), None)

    def compile_root(self) -> str:
        """Node-local folder under which each job and node gets its compile caches."""
        return os.path.expanduser(self.cache.compile_dir or self.node.local_scratch or "/tmp")

    @property
    def bf16(self) -> bool:
        if self.node.bf16 is not None:
            return self.node.bf16
        if self.node.gpus_per_node == 0:
            return True  # CPUs do bf16 in torch
        from hpctune.gpus import lookup
        known = lookup(self.node.gpu_model)
        return known.bf16 if known else True

    @property
    def flash_attention_2(self) -> bool:
        if self.node.flash_attention_2 is not None:
            return self.node.flash_attention_2
        if self.node.gpus_per_node == 0:
            return False
        from hpctune.gpus import lookup
        known = lookup(self.node.gpu_model)
        return known.flash_attention_2 if known else True


def search_path() -> list[Path]:
    """Folders searched for a profile name, first match wins."""
    dirs = []
    if os.environ.get("HPCTUNE_CLUSTERS"):
        dirs += [Path(p) for p in os.environ["HPCTUNE_CLUSTERS"].split(os.pathsep) if p]
    dirs.append(Path.home() / ".config" / "hpctune" / "clusters")
    dirs.append(resources.clusters_dir())
    return dirs


def find(name_or_path: str) -> Path:
    """Resolve a profile name or path to a file; ConfigError lists the known names."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not is_file(p):
            raise ConfigError(name_or_path, "", "cluster profile file not found")
        return p
    if re.fullmatch(SLURM_NAME, name_or_path):  # anything else is no profile name (and no path)
        for d in search_path():
            for ext in (".yaml", ".yml"):
                if is_file(d / f"{name_or_path}{ext}"):
                    return d / f"{name_or_path}{ext}"
    known = ", ".join(sorted(available())) or "none"
    close = difflib.get_close_matches(name_or_path, available(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError("-c/--cluster", "", f"unknown cluster {schema.show(name_or_path)}{hint} (known: {known})")


def is_file(path: Path) -> bool:
    """Path.is_file() that says False, not raises, for names the OS refuses (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def available() -> dict[str, Path]:
    """Every profile name visible on the search path (earlier folders win)."""
    found: dict[str, Path] = {}
    for d in search_path():
        if d.is_dir():
            for f in sorted(d.glob("*.y*ml")):
                found.setdefault(f.stem, f)
    return found


def load(name_or_path: str, overrides: tuple[str, ...] = ()) -> ClusterProfile:
    """Load and validate a profile by name or path."""
    path = find(name_or_path)
    data = yamlfile.apply_overrides(yamlfile.read(path), overrides)
    data.pop("source", None)
    profile = schema.load(ClusterProfile, data, str(path))
    profile.source = str(path)
    validate(profile)
    return profile


def validate(p: ClusterProfile) -> None:
    """Checks that span several fields of one profile."""
    src = p.source
    if p.scheduler == "slurm" and not p.partitions:
        raise ConfigError(src, "partitions", "a Slurm profile needs at least one partition")
    names = [x.name for x in p.partitions]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(src, "partitions", f"partition {sorted(dup)[0]!r} is listed twice")
    for i, part in enumerate(p.partitions):
        parse_minutes(part.max_time, src, f"partitions[{i}].max_time")
    if p.node.gpus_per_node > 0 and p.node.gpu_mem_gib <= 0:
        raise ConfigError(src, "node.gpu_mem_gib", "must be set (GiB of one GPU) when the node has GPUs")
    for key in p.network.nccl_env:
        why = env_name_problem(key)
        if why:
            raise ConfigError(src, f"network.nccl_env.{key}", why)
    # Each extra option as sbatch will read it (prefixes, aliases, short forms), under its
    # full name: what is refused is refused whatever it is spelled like.
    extra: dict[str, str] = {}
    for key, value in p.sbatch_extra.items():
        try:
            name, val = slurm_options.check(key, value)
        except slurm_options.OptionError as e:
            raise ConfigError(src, f"sbatch_extra.{key}", str(e)) from None
        if name in extra:
            raise ConfigError(src, f"sbatch_extra.{key}", f"is --{name} again (given twice under two spellings)")
        extra[name] = "" if val is None else val
    p.sbatch_extra = extra


# Variables launch.sh sets or reads itself (rank, head, port, bundle, attempts), that the
# launchers compute per process, that change how bash, the loader or Python load code,
# or that hpctune sets from a field of its own. Exported from a profile they would run
# code or give ranks the wrong world: a profile is data, its set-up lines are the code.
RESERVED_ENV = {
    # launch.sh's own variables
    "BUNDLE", "OUTPUT_DIR", "NUM_MACHINES", "NUM_PROCESSES", "MAX_ATTEMPTS", "PREEMPTION_MODE", "NODE_RANK",
    "HEAD_ADDR", "HEAD_HOST", "MAIN_PORT", "ATTEMPT", "status", "child", "COMPILE_DIR",
    "HEAD_IP", "ROUTE", "IFACE", "IS_HOST",
    # torchrun / accelerate per-process values
    "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
    "ROLE_RANK", "ROLE_WORLD_SIZE", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
    # code loading and the shell
    "PATH", "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PS4", "PROMPT_COMMAND", "CDPATH", "GLOBIGNORE",
    "HOME", "SHELL", "USER", "LOGNAME", "TERM", "PWD", "OLDPWD", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
    "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONNOUSERSITE", "PYTHONEXECUTABLE", "PYTHONSAFEPATH",
    "PYTHONPLATLIBDIR", "PYTHONBREAKPOINT", "PERL5LIB", "PERL5OPT", "RUBYLIB", "RUBYOPT",
    "NODE_OPTIONS", "JAVA_TOOL_OPTIONS", "GCONV_PATH", "HOSTALIASES", "LOCALDOMAIN", "RESOLV_HOST_CONF",
    # set by hpctune from network.* fields
    "NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "NCCL_IB_DISABLE", "NCCL_IB_HCA",
    # set by hpctune from cache.* fields (compile caches: one node-local folder per job)
    "HF_HOME", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_EXTENSIONS_DIR",
    "TRITON_CACHE_DIR",
}
RESERVED_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SALLOC_", "HPCTUNE_", "SUBMITIT_", "BASH_",
                     "LD_", "DYLD_", "ACCELERATE_", "TORCHELASTIC_", "APPTAINER", "SINGULARITY",
                     "ENROOT_", "PYXIS_", "LMOD_", "MODULE")
# Whole words of a name: HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY (not TOKENIZERS_PARALLELISM).
SECRET_NAME = re.compile(r"(?i)(?:^|_)(?:TOKEN|SECRET|PASSW(?:OR)?D|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIALS?)(?:$|_)")


def env_name_problem(name: str) -> str | None:
    """Why ``name`` may not be exported from a profile's environment map (None: it may)."""
    if not re.fullmatch(ENV_NAME, name) or len(name) > 128:
        return "is not an environment variable name (letters, digits and _, not starting with a digit)"
    if SECRET_NAME.search(name):
        return ("names a secret; secrets do not belong in profiles: export it in your environment instead "
                "(it is read at run time and never written into the run folder)")
    if name in RESERVED_ENV or name.startswith(RESERVED_PREFIXES) or name == "_":
        owned = {"NCCL_SOCKET_IFNAME": "network.socket_ifname", "GLOO_SOCKET_IFNAME": "network.gloo_socket_ifname",
                 "NCCL_IB_DISABLE": "network.infiniband", "NCCL_IB_HCA": "network.ib_hca",
                 "HF_HOME": "cache.hf_home", "HF_HUB_OFFLINE": "network.offline", "HF_DATASETS_OFFLINE": "network.offline",
                 "TRANSFORMERS_OFFLINE": "network.offline", "TORCH_EXTENSIONS_DIR": "cache.compile_dir",
                 "TRITON_CACHE_DIR": "cache.compile_dir"}
        if name in owned:
            return f"is set by hpctune from {owned[name]}; use that field"
        return ("is reserved: hpctune, Slurm, the launchers, bash or the loader set or read it "
                "(a profile's environment map is data; code goes in software.setup)")
    return None
