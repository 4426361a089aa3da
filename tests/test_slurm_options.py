"""hpctune's table of sbatch options (hpctune/slurm_options.py) against the REAL sbatch:
the same long options (getopt_long lists every option of an ambiguous prefix), the same
argument kinds, and prefixes/aliases resolved the way sbatch resolves them; then a bundle
with extra options accepted by `sbatch --test-only` on the test cluster."""

from __future__ import annotations

import re
import shutil
import string
import subprocess

import pytest
import yaml

from hpctune import slurm_options as so

SBATCH = shutil.which("sbatch")


def _sbatch(*args: str) -> str:
    if SBATCH is None:
        pytest.fail("sbatch is not installed: bin/setup installs Slurm (bin/testcluster install)")
    # No stdin script and no controller needed: option parsing fails (or not) first.
    proc = subprocess.run([SBATCH, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    return proc.stderr.splitlines()[0] if proc.stderr else ""


def _names_with_prefix(prefix: str) -> set[str]:
    line = _sbatch(f"--{prefix}")
    if "is ambiguous" in line:
        return set(re.findall(r"'--([a-z-]+)'", line.split("possibilities:")[1]))
    if "unrecognized option" in line:
        return set()
    m = re.search(r"option '--([a-z-]+)'", line)
    return {m.group(1)} if m else {next(n for n in so.OPTIONS if n.startswith(prefix))}


def test_same_long_options_as_sbatch():
    real = set()
    for letter in string.ascii_lowercase:
        real |= _names_with_prefix(letter)
    assert real == set(so.OPTIONS)


@pytest.mark.parametrize("name", sorted(so.OPTIONS))
def test_argument_kind(name):
    kind = so.OPTIONS[name][0]
    needs = "requires an argument" in _sbatch(f"--{name}")
    refuses = "allow an argument" in _sbatch(f"--{name}=x", "--test-only")
    assert (kind == so.REQUIRED) == needs, name
    assert (kind == so.NO) == refuses, name


@pytest.mark.parametrize("written,full", [
    ("partitio", "partition"), ("--partitio", "partition"), ("p", "partition"), ("-p", "partition"),
    ("tasks-per-node", "ntasks-per-node"), ("cluster", "clusters"), ("M", "clusters"), ("gpus", "gpus"),
    ("gpus-per-n", "gpus-per-node"), ("mail-t", "mail-type"), ("H", "hold"), ("arr", "array"), ("D", "chdir"), ("c", "cpus-per-task"), ("n", "ntasks"),
])
def test_resolve(written, full):
    assert so.resolve(written) == full


@pytest.mark.parametrize("written", ["ex", "gpu", "mem-per", "--c", "--n", "zz", "-Z", "--", ""])
def test_resolve_refuses(written):
    with pytest.raises(so.OptionError):
        so.resolve(written)


def test_sbatch_accepts_extra_options(slurm, tmp_path, test_clusters):
    """The rendered #SBATCH lines of allowed extra options (prefixes, short forms, flags)
    are accepted by the real sbatch (--test-only: nothing is queued)."""
    from hpctune import render
    from hpctune.prepare import prepare

    prof = yaml.safe_load((test_clusters / "tc.yaml").read_text())
    prof["sbatch_extra"] = {"mail-t": "NONE", "H": "", "comm": "hpctune-test", "k": "", "nice": "10"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prof))
    job = prepare(str(tmp_path / "p.yaml"), "tiny-sft", ["training.max_steps=1"]).raise_errors().job
    bundle = render.write_bundle(job, tmp_path / "b")
    text = (bundle / "job.sbatch").read_text()
    assert "#SBATCH --mail-type=NONE" in text and "#SBATCH --hold\n" in text
    proc = subprocess.run(["sbatch", "--test-only", str(bundle / "job.sbatch")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "to start at" in proc.stderr, proc.stderr
