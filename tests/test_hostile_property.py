"""Property-based: generated hostile strings in EVERY string field and map key of profiles
and recipes, the fields enumerated from the schema (a new field is covered without
touching this file).

For each example, one field of a valid profile or recipe gets a hostile string (shell
metacharacters, command substitutions that would create a marker file, newlines, CR, NUL,
leading dashes, Unicode separators and invisible characters, very long text). Then either

- hpctune refuses it: one line naming the file and that field, nothing written; or
- it renders, and the REAL job.sbatch runs under bash with recorders (tests/fakebin.py) for
  srun, accelerate, scontrol, sbatch, module and the container runtimes (apptainer, and
  pyxis through srun's --container-image): no marker file appears, no #SBATCH option is
  added, each recorder's argv equals the argv of the same render with a benign value in
  that field (the benign value replaced by the hostile one, as data), and every variable
  the profile exports reaches accelerate exactly.

The profile's software.setup lines are shell code by design (docs/security.md) and are
the one string field left out. Examples are few and derandomized (CI stability, < 1 min).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import typing
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hpctune import profile as profile_mod
from hpctune import recipe as recipe_mod
from hpctune import render, schema, slurm_options
from hpctune.prepare import prepare
from hpctune.errors import ConfigError
from tests import fakebin

TRUSTED = {"profile": {"software.setup[0]"}, "recipe": set()}
DERIVED = {"source"}  # set by the loader, never read from the file

# A GPU profile whose every string field is set (two partitions, modules, a container,
# environment and extra options), so that each value reaches every place it can.
PROFILE = {
    "name": "hostq7", "description": "d", "scheduler": "slurm",
    "partitions": [{"name": "partq7", "max_nodes": 4, "max_time": "1-00:00:00", "default": True},
                   {"name": "partb7", "max_nodes": 2}],
    "account": "acctq7", "qos": "qosq7", "constraint": "featq7", "reservation": "resq7", "exclusive": True,
    "node": {"gpus_per_node": 4, "gpu_model": "a100", "gpu_mem_gib": 80, "cpus_per_node": 32, "ram_gib": 500,
             "local_scratch": "/scratchq7"},
    "network": {"socket_ifname": "ibq7", "gloo_socket_ifname": "ethq7", "infiniband": True, "ib_hca": "mlxq7",
                "hostname_suffix": "sfxq7", "nccl_env": {"NCCL_DEBUG": "WARNq7"}},
    "software": {"modules": ["modq7/1.0"], "setup": [],
                 "container": {"image": "docker://imgq7:1", "runtime": "apptainer", "mounts": ["/srcq7:/dstq7"]}},
    "preemption": {"mode": "requeue", "max_attempts": 3, "signal_seconds": 90},
    "sbatch_extra": {"comment": "cmtq7"},
    "runs_dir": "runsq7",
}
RECIPE = {
    "name": "recq7", "description": "d",
    "model": {"model_name_or_path": "orgq7/modelq7", "revision": "revq7"},
    "data": {"dataset_name": "orgq7/dataq7", "dataset_text_field": "textq7", "dataset_messages_field": "msgq7",
             "dataset_label_field": "labq7", "splits": "train,test"},
    "method": {"type": "lora", "lora_target_modules": ["q_proj", "v_proj"]},
    "deepspeed": {"zero_stage": 3, "offload_param_device": "nvme", "offload_optimizer_device": "nvme",
                  "nvme_path": "/nvmeq7"},
    "training": {"hub_model_id": "orgq7/hubq7", "output_dir": "outq7"},
    "layout": {"nodes": 2, "gpus_per_node": 4, "time": "02:00:00"},
}

# Benign values for fields whose base value is not a plain word, or that the base leaves unset.
BENIGN = {
    "software.container.mounts[0]": "/srcq7:/dstq7", "partitions[0].max_time": "1-00:00:00",
    "partitions[1].max_time": "1-00:00:00", "layout.time": "02:00:00", "layout.partition": "partq7",
    "data.splits": "train,test", "method.lora_target_modules[0]": "q_proj",
    "retry.causes[0]": "hang", "verified.date": "2026-12-02 06:30:00", "verified.job_id": "123",
    # absolute paths (cache.*): under /tmp, since the baseline's launch.sh creates the compile folder
    "cache.hf_home": "/tmp/hfq7", "cache.compile_dir": "/tmp/ccq7", "cache.extensions_dir": "/tmp/extq7",
}


# --- the fields, from the schema ------------------------------------------------------------

def _admits_str(tp) -> bool:
    if tp is str:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(a, str) for a in get_args(tp))
    if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return any(_admits_str(a) for a in get_args(tp) if a is not type(None))
    return False


LITERAL_DEFAULTS: dict[str, object] = {}  # path -> a valid value, for fields that take only some strings


def targets(cls, prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, how to put a string there): 'value', 'item' (a list of one),
    'key' (a map key) or 'mapvalue' (a map value), for every string in the schema."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in DERIVED:
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        opts = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (typing.Union, __import__("types").UnionType) else [tp]
        for opt in opts:
            if dataclasses.is_dataclass(opt):
                out += targets(opt, f"{path}.")
            elif get_origin(opt) is list:
                (item,) = get_args(opt)
                if dataclasses.is_dataclass(item):
                    out += targets(item, f"{path}[0].")
                elif _admits_str(item):
                    out.append((f"{path}[0]", "item"))
            elif get_origin(opt) is dict:
                out += [(path, "key"), (path, "mapvalue")]
        if _admits_str(tp) and (path, "value") not in out:
            out.append((path, "value"))
            if tp is not str and str not in get_args(tp) and f.default is not dataclasses.MISSING:
                LITERAL_DEFAULTS[path] = f.default
    return out


PROFILE_TARGETS = [("profile", p, k) for p, k in targets(profile_mod.ClusterProfile) if p not in TRUSTED["profile"]]
RECIPE_TARGETS = [("recipe", p, k) for p, k in targets(recipe_mod.Recipe)]
ALL_TARGETS = PROFILE_TARGETS + RECIPE_TARGETS


def test_targets_cover_the_schema():
    """Guard: the enumeration finds the fields a reader would list (and more)."""
    paths = {p for _, p, _ in ALL_TARGETS}
    for must in ("name", "account", "software.modules[0]", "software.container.image", "software.container.mounts[0]",
                 "network.nccl_env", "sbatch_extra", "partitions[0].name", "node.local_scratch", "runs_dir",
                 "model.model_name_or_path", "data.dataset_name", "training.output_dir", "layout.partition",
                 "method.lora_target_modules[0]", "layout.time", "precision"):
        assert must in paths, must
    assert "software.setup[0]" not in paths
    assert len(ALL_TARGETS) >= 50


# --- hostile strings ---------------------------------------------------------------------------

MARK = "@M@"  # replaced by the example's marker path
PAYLOADS = [
    "$(touch @M@)", "`touch @M@`", "x;touch @M@", "x\ntouch @M@", "x\rtouch @M@", "x' ; touch @M@ ; '",
    'x" ; touch @M@ ; "', "x && touch @M@ #", "a[$(touch @M@)]", "$'\\x41'$(touch @M@)", "${x:-$(touch @M@)}",
    "x|touch @M@", "x\x00y", "--output=/tmp/x", "-x", "--", "-", "x\u2028touch @M@", "x\u0085y", "\u202etouch",
    "x\u200by", "x\ny\n#SBATCH --array=1-9", "--array=1-9", "docker://x --bind=/:/host", "x\ttouch @M@",
    "A" * 5000, "x$((1+1))", "$HOME", "*", "~root", "x y", "", " ", "\ud800", "hf_" + "a" * 34, "a,b", "=",
    "../../../etc/passwd", "/dev/null", "a:b:c", "\\", "'", '"', "%j", "!",
]
_ALPHABET = st.sampled_from(list("ab-_.:/=,;|&$`'\"\\ \t\n\r\x00\x1f\x7f#*?[]{}()<>!~%@^+") +
                            ["\u2028", "\u2029", "\u0085", "\u00a0", "\u200b", "\u202e", "\ufeff", "é", "ß", "😀"])
HOSTILE = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(_ALPHABET, min_size=1, max_size=24),
    st.tuples(st.sampled_from(["", "-", "--", "x", "-x "]), st.sampled_from(PAYLOADS),
              st.text(_ALPHABET, max_size=6)).map("".join),
    st.text(min_size=256, max_size=2000),
)


# --- building, rendering, running ----------------------------------------------------------------

def _put(data: dict, path: str, how: str, value: str, benign_key: str = "BENIGNQ7"):
    parts = re.findall(r"[^.\[\]]+|\[0\]", path)
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if part == "[0]":
            continue
        if nxt == "[0]" and i + 1 < len(parts) - 1:
            lst = node.setdefault(part, [{}])
            if not lst:
                lst.append({})
            node = lst[0]
            continue
        if nxt == "[0]":
            node = node.setdefault(part, [])
            node[:] = [value]
            return
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if how == "key":
        node[last] = {value: "cmtq7" if last == "sbatch_extra" else "valq7"}
    elif how == "mapvalue":
        node[last] = {("comment" if last == "sbatch_extra" else benign_key): value}
    else:
        node[last] = value


def _benign(path: str, how: str):
    if how == "key":
        return "comment" if path == "sbatch_extra" else "BENIGNQ7"
    if path in LITERAL_DEFAULTS:
        return LITERAL_DEFAULTS[path]
    return BENIGN.get(path, "benignq7")


def _render(kind: str, path: str, how: str, value: str, runtime: str, folder: Path):
    prof, rec = copy.deepcopy(PROFILE), copy.deepcopy(RECIPE)
    prof["software"]["container"]["runtime"] = runtime
    _put(prof if kind == "profile" else rec, path, how, value)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.yaml").write_text(yaml.safe_dump(prof, allow_unicode=False))
    (folder / "r.yaml").write_text(yaml.safe_dump(rec, allow_unicode=False))
    # Findings of the rules do not stop it (as submit --force): the value goes as far as it can.
    job = prepare(str(folder / "p.yaml"), str(folder / "r.yaml")).job
    bundle = render.write_bundle(job, folder / "bundle")
    return job, bundle


def _run(bundle: Path, folder: Path) -> tuple[list, dict]:
    log = folder / "calls"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "HPCTUNE", "SUBMITIT"))}
    # getent: the head node's name (n1 + a hostile suffix) resolves through a stand-in
    env.update(fakebin.install(folder / "bin", log, programs=(
        "accelerate", "srun", "sbatch", "module", "apptainer", "scontrol", "enroot", "getent", "hostpy")))
    env["HPCTUNE_PYTHON"] = str(folder / "bin" / "hostpy")  # job.sbatch's after-step question: "done"
    env.update(HOME=str(folder), SLURM_NODEID="0", SLURM_JOB_ID="99", SLURM_JOB_NODELIST="n1", LC_ALL="C.UTF-8")
    proc = subprocess.run(["bash", str(bundle / "job.sbatch")], env=env, cwd=folder, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return fakebin.calls(log), fakebin.environment(log)


def _sbatch_options(bundle: Path) -> list[str]:
    lines = (bundle / "job.sbatch").read_text().splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    opts = []
    for i, ln in enumerate(lines):
        if re.match(r"\s*#\s*SBATCH", ln):  # what sbatch might read as a directive
            assert i < first_command and re.fullmatch(r"#SBATCH --[a-z-]+(=[A-Za-z0-9_.,:=@+/%\-&|!\[\]()*]+)?", ln), ln
            opts.append(ln.split("=")[0][len("#SBATCH --"):])
    return opts


def _normal(calls: list, bundle: Path) -> list:
    return [{"prog": c["prog"], "argv": [a.replace(str(bundle), "BUNDLE") for a in c["argv"]]} for c in calls]


_BASELINES: dict = {}


def _baseline(kind, path, how, runtime):
    key = (kind, path, how, runtime)
    if key not in _BASELINES:
        folder = Path(tempfile.mkdtemp(prefix="hpctune-base-"))
        try:
            job, bundle = _render(kind, path, how, _benign(path, how), runtime, folder)
            calls, _ = _run(bundle, folder)
            _BASELINES[key] = (_normal(calls, bundle), _sbatch_options(bundle))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return _BASELINES[key]


@settings(max_examples=int(os.environ.get("HPCTUNE_HYPOTHESIS_EXAMPLES", "120")), derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(target=st.sampled_from(ALL_TARGETS), raw=HOSTILE, runtime=st.sampled_from(["apptainer", "pyxis"]))
def test_hostile_string_in_any_field(target, raw, runtime):
    kind, path, how = target
    folder = Path(tempfile.mkdtemp(prefix="hpctune-hostile-"))
    marker = folder / "PWNED"
    value = raw.replace(MARK, str(marker))
    try:
        try:
            job, bundle = _render(kind, path, how, value, runtime, folder)
        except ConfigError as e:
            text = str(e)
            assert "\n" not in text and "\r" not in text, text
            assert e.source.endswith("p.yaml" if kind == "profile" else "r.yaml"), text
            # the field; or, for text YAML itself cannot hold (e.g. a lone surrogate), the line
            assert (e.field == path or e.field.startswith((f"{path}.", f"{path}["))
                    or (e.field == "" and "not valid YAML: line" in text)), (path, text)
            assert not (folder / "bundle").exists(), "nothing may be written on bad input"
            event("refused")
            return
        event("rendered and run")
        for f in bundle.iterdir():
            if f.is_file():
                assert "hf_" + "a" * 34 not in f.read_text(errors="replace")
        calls, env = _run(bundle, folder)
        assert not marker.exists(), f"{kind} {path} ({how}) = {value!r} ran a command"
        base_calls, base_opts = _baseline(kind, path, how, runtime)
        benign = _benign(path, how)
        # No #SBATCH option added or lost; an accepted extra option is checked as sbatch reads it.
        opts = _sbatch_options(bundle)
        if path == "sbatch_extra" and how == "key":
            base_opts = [slurm_options.resolve(value) if o == "comment" else o for o in base_opts]
        assert sorted(opts) == sorted(base_opts), (opts, base_opts)
        assert isinstance(benign, str), (path, benign)  # a field of fixed values took a hostile string
        expected = [{"prog": c["prog"], "argv": [a.replace(benign, value) for a in c["argv"]]} for c in base_calls]
        assert _normal(calls, bundle) == expected
        # ... and a value that took the place of a word is never read as an option.
        for base_call, call in zip(base_calls, expected):
            for before, after in zip(base_call["argv"], call["argv"]):
                if before != after and not before.startswith("-"):
                    assert not after.startswith("-"), (call["prog"], after)
        for k, v in render.node_environment(job).items():
            assert env.get(k) == v, (k, v, env.get(k))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_every_target_has_a_working_baseline():
    """Each field's benign value renders and runs (else the property test could not compare)."""
    for kind, path, how in ALL_TARGETS:
        # apptainer baselines are exercised by test_hostile_strings.py for every field
        for runtime in (("apptainer", "pyxis") if path.startswith("software.container") else ("pyxis",)):
            try:
                calls, _ = _baseline(kind, path, how, runtime)
            except ConfigError as e:  # a field whose benign value is refused needs an entry in BENIGN
                pytest.fail(f"{kind} {path} ({how}): benign value refused: {e}")
            progs = [c["prog"] for c in calls]
            assert "accelerate" in progs and "srun" in progs and "module" in progs, (path, progs)
            if path != "software.container.runtime":  # its benign value is the default runtime
                assert ("apptainer" in progs) == (runtime == "apptainer"), (path, progs)
