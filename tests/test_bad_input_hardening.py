"""Hostile and broken inputs across the boundaries of issue #13 (environment maps, extra
sbatch options, values that would be read as options, values and YAML): each one gives
exit code 2 and ONE line naming the file and the field, and nothing is written.

The command line's own entry point (hpctune.cli.main) runs in-process: the same handlers
as the console script, ~20x faster than a subprocess per case (test_bad_input.py runs
the subprocess path).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from hpctune import cli, resources

PROFILE = yaml.safe_load((resources.clusters_dir() / "example-h100.yaml").read_text())
RECIPE = yaml.safe_load((resources.recipes_dir() / "llama2-70b-lora-zero3.yaml").read_text())


def p(path: str, value):
    """Profile edit: set a dotted path."""
    return ("profile", path, value)


def r(path: str, value):
    """Recipe edit: set a dotted path."""
    return ("recipe", path, value)


def env(key, value="1"):
    return p("network.nccl_env", {key: value})


def extra(key, value="x"):
    return p("sbatch_extra", {key: value})


# id, edit (or raw text for the recipe/profile, or None), --set overrides, file (profile|recipe|--set),
# field expected in the message, words expected in the message
CASES = [
    # --- profile environment maps ---------------------------------------------------------------
    ("env-bash-env", env("BASH_ENV", "/tmp/x"), [], "profile", "network.nccl_env.BASH_ENV", "reserved"),
    ("env-ld-preload", env("LD_PRELOAD", "/tmp/x.so"), [], "profile", "network.nccl_env.LD_PRELOAD", "reserved"),
    ("env-ld-library-path", env("LD_LIBRARY_PATH", "/x"), [], "profile", "network.nccl_env.LD_LIBRARY_PATH", "reserved"),
    ("env-path", env("PATH", "/tmp"), [], "profile", "network.nccl_env.PATH", "reserved"),
    ("env-pythonpath", env("PYTHONPATH", "/tmp"), [], "profile", "network.nccl_env.PYTHONPATH", "reserved"),
    ("env-slurm", env("SLURM_NODEID", "0"), [], "profile", "network.nccl_env.SLURM_NODEID", "reserved"),
    ("env-slurm-restart", env("SLURM_RESTART_COUNT", "a[$(id)]"), [], "profile", "network.nccl_env.SLURM_RESTART_COUNT", "reserved"),
    ("env-hpctune", env("HPCTUNE_NODE_RANK", "0"), [], "profile", "network.nccl_env.HPCTUNE_NODE_RANK", "reserved"),
    ("env-launch-rank", env("NODE_RANK", "0"), [], "profile", "network.nccl_env.NODE_RANK", "reserved"),
    ("env-launch-attempt", env("ATTEMPT", "9"), [], "profile", "network.nccl_env.ATTEMPT", "reserved"),
    ("env-launch-bundle", env("BUNDLE", "/tmp"), [], "profile", "network.nccl_env.BUNDLE", "reserved"),
    ("env-master-addr", env("MASTER_ADDR", "evil"), [], "profile", "network.nccl_env.MASTER_ADDR", "reserved"),
    ("env-cuda-visible", env("CUDA_VISIBLE_DEVICES", "0"), [], "profile", "network.nccl_env.CUDA_VISIBLE_DEVICES", "reserved"),
    ("env-accelerate", env("ACCELERATE_MIXED_PRECISION", "no"), [], "profile", "network.nccl_env.ACCELERATE_MIXED_PRECISION", "reserved"),
    ("env-owned-ifname", env("NCCL_SOCKET_IFNAME", "eth0"), [], "profile", "network.nccl_env.NCCL_SOCKET_IFNAME", "network.socket_ifname"),
    ("env-secret-name", env("HF_TOKEN", "abc"), [], "profile", "network.nccl_env.HF_TOKEN", "secret"),
    ("env-secret-api-key", env("WANDB_API_KEY", "abc"), [], "profile", "network.nccl_env.WANDB_API_KEY", "secret"),
    ("env-secret-value", env("NCCL_DEBUG", "hf_" + "x" * 34), [], "profile", "network.nccl_env.NCCL_DEBUG", "secret"),
    ("env-name-digit", env("1BAD"), [], "profile", "network.nccl_env.1BAD", "not an environment variable name"),
    ("env-name-dash", env("A-B"), [], "profile", "network.nccl_env.A-B", "not an environment variable name"),
    ("env-name-space", env("A B"), [], "profile", "network.nccl_env.A B", "not an environment variable name"),
    ("env-value-newline", env("NCCL_DEBUG", "INFO\nid"), [], "profile", "network.nccl_env.NCCL_DEBUG", "one line"),
    ("env-value-float", env("NCCL_BUFFSIZE", 1.50), [], "profile", "network.nccl_env.NCCL_BUFFSIZE", "in quotes"),
    ("env-value-bool", env("NCCL_DEBUG", True), [], "profile", "network.nccl_env.NCCL_DEBUG", "expected a string"),
    # --- extra sbatch options ----------------------------------------------------------------------
    ("sbatch-prefix-partition", extra("partitio", "big"), [], "profile", "sbatch_extra.partitio", "--partition"),
    ("sbatch-alias-tasks", extra("tasks-per-node", "4"), [], "profile", "sbatch_extra.tasks-per-node", "--ntasks-per-node"),
    ("sbatch-short-p", extra("-p", "big"), [], "profile", "sbatch_extra.-p", "--partition"),
    ("sbatch-short-bare", extra("p", "big"), [], "profile", "sbatch_extra.p", "--partition"),
    ("sbatch-gpus", extra("gpus", "16"), [], "profile", "sbatch_extra.gpus", "conflicts with --gpus-per-node"),
    ("sbatch-short-G", extra("G", "16"), [], "profile", "sbatch_extra.G", "--gpus"),
    ("sbatch-mem-per-cpu", extra("mem-per-cpu", "4G"), [], "profile", "sbatch_extra.mem-per-cpu", "conflicts with --mem"),
    ("sbatch-mem-per-gpu", extra("mem-per-gpu", "4G"), [], "profile", "sbatch_extra.mem-per-gpu", "conflicts with --mem"),
    ("sbatch-array", extra("array", "1-10"), [], "profile", "sbatch_extra.array", "hpctune sweep"),
    ("sbatch-array-prefix", extra("arr", "1-10"), [], "profile", "sbatch_extra.arr", "--array"),
    ("sbatch-export", extra("export", "NONE"), [], "profile", "sbatch_extra.export", "--export"),
    ("sbatch-export-file", extra("export-file", "/tmp/e"), [], "profile", "sbatch_extra.export-file", "environment"),
    ("sbatch-chdir", extra("chdir", "/tmp"), [], "profile", "sbatch_extra.chdir", "--chdir"),
    ("sbatch-short-D", extra("D", "/tmp"), [], "profile", "sbatch_extra.D", "--chdir"),
    ("sbatch-wrap", extra("wrap", "id"), [], "profile", "sbatch_extra.wrap", "replaces the batch script"),
    ("sbatch-output", extra("output", "/tmp/o"), [], "profile", "sbatch_extra.output", "--output"),
    ("sbatch-short-o", extra("o", "/tmp/o"), [], "profile", "sbatch_extra.o", "--output"),
    ("sbatch-ntasks", extra("ntasks", "8"), [], "profile", "sbatch_extra.ntasks", "one launcher task per node"),
    ("sbatch-gres", extra("gres", "gpu:8"), [], "profile", "sbatch_extra.gres", "--gpus-per-node"),
    ("sbatch-clusters", extra("M", "other"), [], "profile", "sbatch_extra.M", "another cluster"),
    ("sbatch-cluster-alias", extra("cluster", "other"), [], "profile", "sbatch_extra.cluster", "another cluster"),
    ("sbatch-parsable", extra("parsable", ""), [], "profile", "sbatch_extra.parsable", "sbatch's answer"),
    ("sbatch-test-only", extra("test-only", ""), [], "profile", "sbatch_extra.test-only", "submits nothing"),
    ("sbatch-uid", extra("uid", "0"), [], "profile", "sbatch_extra.uid", "as someone else"),
    ("sbatch-unknown", extra("colour", "red"), [], "profile", "sbatch_extra.colour", "not an sbatch option"),
    ("sbatch-ambiguous", extra("ex", "n1"), [], "profile", "sbatch_extra.ex", "ambiguous"),
    ("sbatch-flag-with-value", extra("hold", "please"), [], "profile", "sbatch_extra.hold", "takes no value"),
    ("sbatch-needs-value", extra("mail-type", ""), [], "profile", "sbatch_extra.mail-type", "needs a value"),
    ("sbatch-time-min", extra("time-min", "10"), [], "profile", "sbatch_extra.time-min", "time limit"),
    ("sbatch-value-space", extra("comment", "a b"), [], "profile", "sbatch_extra.comment", "plain Slurm option value"),
    ("sbatch-twice", p("sbatch_extra", {"mail-type": "END", "mail-t": "FAIL"}), [], "profile", "sbatch_extra.mail-t", "given twice"),
    # --- values that would be read as options ------------------------------------------------------
    ("module-force", p("software.modules", ["--force"]), [], "profile", "software.modules[0]", "not starting with '-'"),
    ("module-option-word", p("software.modules", ["-f x"]), [], "profile", "software.modules[0]", "module name"),
    ("image-option", p("software.container", {"image": "--bind=/:/host", "runtime": "apptainer"}), [], "profile", "software.container.image", "not starting with '-'"),
    ("image-dash", p("software.container", {"image": "-x", "runtime": "pyxis"}), [], "profile", "software.container.image", "not starting with '-'"),
    ("image-space", p("software.container", {"image": "img.sif --nv", "runtime": "apptainer"}), [], "profile", "software.container.image", "an image"),
    ("mount-comma", p("software.container", {"image": "x.sif", "mounts": ["/a:/b,/etc:/x"]}), [], "profile", "software.container.mounts[0]", "no commas"),
    ("mount-option", p("software.container", {"image": "x.sif", "mounts": ["--bind=/:/host"]}), [], "profile", "software.container.mounts[0]", "absolute paths"),
    ("mount-relative", p("software.container", {"image": "x.sif", "mounts": ["data:/data"]}), [], "profile", "software.container.mounts[0]", "absolute paths"),
    ("partition-dash", p("partitions", [{"name": "-x", "default": True}]), [], "profile", "partitions[0].name", "not starting with '-'"),
    ("account-option", p("account", "--qos=high"), [], "profile", "account", "not starting with '-'"),
    ("qos-dash", p("qos", "-q"), [], "profile", "qos", "not starting with '-'"),
    ("reservation-dash", p("reservation", "-r"), [], "profile", "reservation", "not starting with '-'"),
    ("constraint-dash", p("constraint", "-c"), [], "profile", "constraint", "not starting with '-'"),
    ("ib-hca-space", p("network.ib_hca", "mlx5 0"), [], "profile", "network.ib_hca", "HCA list"),
    ("recipe-name-dash", r("name", "-x"), [], "recipe", "name", "not starting with '-'"),
    ("set-partition-option", None, ["layout.partition=--x"], "recipe", "layout.partition", "not starting with '-'"),
    # --- values and YAML --------------------------------------------------------------------------------
    ("set-leading-zero", None, ["method.lora_r=08"], "recipe", "method.lora_r", "plain decimal"),
    ("set-octal", None, ["method.lora_r=0o17"], "recipe", "method.lora_r", "plain decimal"),
    ("set-underscores", None, ["method.lora_r=1_000"], "recipe", "method.lora_r", "plain decimal"),
    ("set-hex", None, ["method.lora_r=0x10"], "recipe", "method.lora_r", "plain decimal"),
    ("set-inf", None, ["training.learning_rate=.inf"], "recipe", "training.learning_rate", "finite"),
    ("set-nan", None, ["training.learning_rate=.nan"], "recipe", "training.learning_rate", "finite"),
    ("set-overflow", None, ["training.num_train_epochs=1e400"], "recipe", "training.num_train_epochs", "finite"),
    ("set-huge-int", None, ["data.max_seq_len=99999999999999999999"], "recipe", "data.max_seq_len", "at most"),
    ("set-number-name", None, ["name=1e5"], "recipe", "name", "in quotes"),
    ("set-empty-part", None, ["training..seed=1"], "--set", "training..seed", "not a field path"),
    ("set-seed-negative", None, ["training.seed=-1"], "recipe", "training.seed", "at least 0"),
    ("set-duplicate-inline", None, ["model={model_name_or_path: a, model_name_or_path: b}"], "--set", "model.model_name_or_path", "given twice"),
    ("profile-inf-memory", p("node.gpu_mem_gib", float("inf")), [], "profile", "node.gpu_mem_gib", "finite"),
    ("profile-nan-ram", p("node.ram_gib", float("nan")), [], "profile", "node.ram_gib", "finite"),
    ("recipe-duplicate-section", ("recipe", "training:\n  seed: 1\n"), [], "recipe", "training", "given twice"),
    ("profile-duplicate-key", ("profile", "qos: a\n"), [], "profile", "qos", "given twice"),
    ("recipe-deep", ("recipe", "deep: " + "[" * 3000 + "]" * 3000 + "\n"), [], "recipe", "", "deep[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nested more than 16"),
    ("recipe-long-name", r("name", "n" * 100), [], "recipe", "name", "at most 64"),
    ("recipe-line-separator", r("description", "a\u2028b"), [], "recipe", "description", "one line"),
    ("recipe-bidi", r("description", "a\u202eb"), [], "recipe", "description", "one line"),
    ("recipe-nul", r("data.dataset_text_field", "a\x00b"), [], "recipe", "data.dataset_text_field", "one line"),
    ("recipe-long-path-part", r("data.dataset_name", "/data/" + "d" * 300), [], "recipe", "data.dataset_name", "255"),
    ("recipe-token-value", r("training.hub_model_id", "hf_" + "A" * 34), [], "recipe", "training.hub_model_id", "secret"),
    ("recipe-nested-secret", r("training.hub_token", "x"), [], "recipe", "training.hub_token", "secrets do not belong"),
    ("recipe-very-long-value", r("description", "x" * 5000), [], "recipe", "description", "at most 1024"),
    ("profile-not-utf8", ("profile-bytes", b"name: caf\xe9\n"), [], "profile", "", "not UTF-8"),
    ("recipe-top-level-list", ("recipe-raw", "- a\n- b\n"), [], "recipe", "", "mapping at the top level"),
]


def test_at_least_60_cases():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


def _assign(data: dict, dotted: str, value):
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if not isinstance(node.get(k), dict):
            node[k] = {}
        node = node[k]
    node[keys[-1]] = value


def _files(tmp: Path, edit) -> tuple[Path, Path]:
    prof, rec = copy.deepcopy(PROFILE), copy.deepcopy(RECIPE)
    ptext = rtext = None
    if edit is not None:
        kind, *rest = edit
        if kind in ("profile", "recipe") and len(rest) == 2:
            _assign(prof if kind == "profile" else rec, *rest)
        elif kind == "recipe":  # raw text appended: a key given twice, deep nesting
            rtext = yaml.safe_dump(rec, sort_keys=False) + rest[0]
        elif kind == "profile":
            ptext = yaml.safe_dump(prof, sort_keys=False) + rest[0]
        elif kind == "recipe-raw":
            rtext = rest[0]
        elif kind == "profile-bytes":
            (tmp / "p.yaml").write_bytes(rest[0])
            ptext = False
    if ptext is not False:
        (tmp / "p.yaml").write_text(ptext if ptext is not None else yaml.safe_dump(prof, sort_keys=False))
    (tmp / "r.yaml").write_text(rtext if rtext is not None else yaml.safe_dump(rec, sort_keys=False))
    return tmp / "p.yaml", tmp / "r.yaml"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused(case, tmp_path, capsys):
    _id, edit, overrides, where, field, words = case
    prof, rec = _files(tmp_path, edit)
    out = tmp_path / "bundle"
    args = ["render", "-c", str(prof), str(rec), "-o", str(out)]
    for o in overrides:
        args += ["--set", o]
    code, _stdout, stderr = run_cli(capsys, *args)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    msg = lines[0]
    assert msg.startswith("hpctune: error: ") and "Traceback" not in stderr
    expected_file = {"profile": str(prof), "recipe": str(rec), "--set": "--set"}[where]
    assert msg.startswith(f"hpctune: error: {expected_file}:"), msg
    if field:
        assert f": {field}:" in msg, msg
    assert words in msg, msg
    assert not out.exists(), "nothing may be written on bad input"


def test_accepted_extra_options_render_as_sbatch_reads_them(tmp_path, capsys):
    """Prefixes and short forms of allowed options are written under their full names;
    flags without a value."""
    prof, rec = _files(tmp_path, p("sbatch_extra", {"mail-t": "END", "H": "", "k": "", "comm": "x"}))
    code, _, err = run_cli(capsys, "render", "-c", str(prof), str(rec), "-o", str(tmp_path / "b"))
    assert code == 0, err
    lines = [ln for ln in (tmp_path / "b" / "job.sbatch").read_text().splitlines() if ln.startswith("#SBATCH")]
    for want in ("#SBATCH --mail-type=END", "#SBATCH --hold", "#SBATCH --no-kill", "#SBATCH --comment=x"):
        assert want in lines


def test_internal_error_is_one_line_with_a_log(tmp_path, capsys, monkeypatch):
    """The last resort: an unexpected exception prints one line naming a private log file
    that holds the traceback, and exits 70."""
    from hpctune import render

    def boom(*a, **k):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(render, "render_files", boom)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "render", "-c", "local", "tiny-sft", "-o", str(tmp_path / "b"))
    assert code == 70
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "ZeroDivisionError: planted" in lines[0]
    log = Path(lines[0].split("details in ")[1].split(";")[0])
    assert log.is_file() and log.parent == tmp_path / "cache" / "hpctune" / "crash"
    assert "Traceback" in log.read_text() and "planted" in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == oct(0o600)
