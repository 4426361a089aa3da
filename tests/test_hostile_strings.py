"""Hostile strings in every string field and map key that the schema has (enumerated from
it: see tests/test_hostile_property.py, whose machinery this shares) must not run, inject
an option or an #SBATCH directive.

Deterministic companion of the property-based test: for EACH field, a fixed list of
payloads that would create a marker file if a shell ever evaluated them, or that would be
read as an option. Either hpctune refuses the value (one line naming the file and field,
nothing written), or the REAL rendered job.sbatch runs under bash with recorders for srun,
accelerate, scontrol, sbatch, module and apptainer (tests/fakebin.py) and the recorded
argv equals the benign render's, the hostile value in place of the benign one. The
profile's `software.setup` lines are shell code by design (docs/security.md) and are not
part of this test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hpctune import render
from hpctune.errors import ConfigError
from tests import test_hostile_property as hp

PAYLOADS = [
    "$(touch @M@)",
    "`touch @M@`",
    "x; touch @M@",
    "x\ntouch @M@",
    "x' ; touch @M@; echo '",
    'x" ; touch @M@; echo "',
    "a[$(touch @M@)]",
    "-x",
]


@pytest.mark.parametrize("target", hp.ALL_TARGETS, ids=[f"{k}:{p}:{h}" for k, p, h in hp.ALL_TARGETS])
def test_hostile_value_never_runs(target):
    kind, path, how = target
    rendered = 0
    for payload in PAYLOADS:
        folder = Path(tempfile.mkdtemp(prefix="hpctune-hs-"))
        marker = folder / "PWNED"
        value = payload.replace(hp.MARK, str(marker))
        try:
            os.environ["HF_TOKEN"] = "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"
            try:
                job, bundle = hp._render(kind, path, how, value, "apptainer", folder)
            except ConfigError as e:
                assert "\n" not in str(e) and (e.field == path or e.field.startswith((f"{path}.", f"{path}["))
                                                or (e.field == "" and "not valid YAML: line" in str(e))), str(e)
                assert not (folder / "bundle").exists()
                continue
            finally:
                del os.environ["HF_TOKEN"]
            rendered += 1
            for f in bundle.iterdir():
                if f.is_file():
                    assert "hf_SECRET" not in f.read_text()
            calls, env = hp._run(bundle, folder)
            assert not marker.exists(), f"{kind} field {path} with {payload!r} ran a command"
            base_calls, _ = hp._baseline(kind, path, how, "apptainer")
            benign = hp._benign(path, how)
            expected = [{"prog": c["prog"], "argv": [a.replace(benign, value) for a in c["argv"]]} for c in base_calls]
            assert hp._normal(calls, bundle) == expected
            assert not any(a.startswith("-x") for c in calls if c["prog"] != "srun" for a in c["argv"]), calls
            for k, v in render.node_environment(job).items():
                assert env.get(k) == v
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{kind}.{path} ({how}): {rendered} of {len(PAYLOADS)} payloads rendered and executed safely")


def test_some_hostile_values_are_rendered_and_executed(tmp_path):
    """Guard against a vacuous pass: free-text fields DO render hostile text (quoted)."""
    marker = tmp_path / "PWNED"
    job, bundle = hp._render("profile", "network.nccl_env", "mapvalue", f"$(touch {marker})", "apptainer", tmp_path)
    launch = (bundle / "launch.sh").read_text()
    assert f"export BENIGNQ7='$(touch {marker})'" in launch
    _, env = hp._run(bundle, tmp_path)
    assert env["BENIGNQ7"] == f"$(touch {marker})" and not marker.exists()
