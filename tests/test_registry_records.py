"""Registry records and run-folder job ids are data from a possibly shared folder: a bad
one is named and skipped, and nothing from it reaches scancel/squeue/sacct as an option.

`hpctune status`, `cancel` and `runs` run in-process (the console script's own entry point)
with recorders for scancel, squeue, sacct and scontrol on PATH (tests/fakebin.py): squeue
answers RUNNING for job 123, the others only record their argv.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpctune import cli
from hpctune.run import registry
from hpctune.run.records import JOB_ID
from tests import fakebin
from tests.clitools import REPO

SQUEUE = r'''
for a in "$@"; do case $a in *123*) echo "123|RUNNING|n1|None";; esac; done
'''


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bundle") / "run"
    subprocess.run([sys.executable, "-m", "hpctune", "render", "-c", "local", "tiny-sft", "-o", str(folder)],
                   check=True, capture_output=True, cwd=REPO)
    return folder


def _record(bundle: Path, **over) -> dict:
    rec = dict(id="rec", cluster="tc", recipe="tiny-sft", bundle=str(bundle), output_dir=str(bundle / "output"),
               scheduler="slurm", nodes=1, procs_per_node=1, submitted=1.0e9, jobs=["123"], state="RUNNING",
               preemption="requeue", max_attempts=3)
    rec.update(over)
    return rec


class World:
    """A registry home, recorders on PATH, and a copy of the run folder to tamper with."""

    def __init__(self, bundle: Path):
        self.root = Path(tempfile.mkdtemp(prefix="hpctune-reg-"))
        self.bundle = self.root / "run"
        shutil.copytree(bundle, self.bundle)
        self.home = self.root / "home"
        (self.home / "runs").mkdir(parents=True)
        self.log = self.root / "calls"
        self.env = fakebin.install(self.root / "bin", self.log, programs=("scancel", "squeue", "sacct", "scontrol"))
        (self.root / "bin" / "squeue").write_text((self.root / "bin" / "squeue").read_text() + SQUEUE)
        self.marker = self.root / "PWNED"

    def write(self, name: str, data) -> None:
        text = data if isinstance(data, str) else json.dumps(data)
        (self.home / "runs" / f"{name}.json").write_text(text)

    def run(self, capsys, monkeypatch, *argv) -> tuple[int, str, str]:
        monkeypatch.setenv("HPCTUNE_HOME", str(self.home))
        monkeypatch.setenv("PATH", self.env["PATH"])
        monkeypatch.setenv("FAKEBIN_LOG", self.env["FAKEBIN_LOG"])
        monkeypatch.setenv("XDG_CACHE_HOME", str(self.root / "cache"))
        with pytest.raises(SystemExit) as e:
            cli.main(list(argv))
            raise SystemExit(0)
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    def calls(self, prog: str) -> list[list[str]]:
        return [c["argv"] for c in fakebin.calls(self.log) if c["prog"] == prog]

    def close(self):
        shutil.rmtree(self.root, ignore_errors=True)


def _check_calls(w: World):
    """scancel gets `--` and job ids only; squeue/sacct -j lists hold job ids only."""
    for argv in w.calls("scancel"):
        assert argv[0] == "--" and all(JOB_ID.fullmatch(a) for a in argv[1:]), argv
    for prog in ("squeue", "sacct"):
        for argv in w.calls(prog):
            ids = argv[argv.index("-j") + 1].split(",")
            assert all(JOB_ID.fullmatch(j) for j in ids), argv
    assert not w.marker.exists()


def _one_line_or_none(err: str):
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err


# --- generated: hostile values in every field of a record, and in the run folder's job ids ----

HOSTILE = st.one_of(
    st.sampled_from(["--user=root", "-u", "--", "123 --user=x", "123\n--user=x", "$(touch @M@)", "123;touch @M@",
                     "123_", "_4", "1" * 40, "", " ", "../../etc", "/", "x\x1b[2J", "\u202e", "RUNNING\n", "NaN"]),
    st.text(max_size=30), st.integers(min_value=-2**63, max_value=2**63), st.floats(), st.none(), st.booleans(),
    st.lists(st.text(max_size=10), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
RUN_FIELDS = [f.name for f in dataclasses.fields(registry.Run)]


@settings(max_examples=int(os.environ.get("HPCTUNE_HYPOTHESIS_EXAMPLES", "120")), derandomize=True, database=None,
          deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(RUN_FIELDS + ["jobs[0]", "events.job_id", "attempts.job_id"]), value=HOSTILE)
def test_hostile_record_through_status_and_cancel(bundle, capsys, monkeypatch, field, value):
    w = World(bundle)
    try:
        if isinstance(value, str):
            value = value.replace("@M@", str(w.marker))
        rec = _record(w.bundle)
        if field == "jobs[0]":
            rec["jobs"] = [value]
        elif field == "events.job_id":
            (w.bundle / "logs").mkdir(exist_ok=True)
            (w.bundle / "logs" / "events.jsonl").write_text(json.dumps({"event": "resubmitted", "job_id": value}) + "\n")
        elif field == "attempts.job_id":
            (w.bundle / "logs").mkdir(exist_ok=True)
            (w.bundle / "logs" / "attempts.jsonl").write_text(json.dumps({"attempt": 1, "job_id": value}) + "\n")
        else:
            rec[field] = value
        w.write("rec", rec)
        w.write("good", _record(w.bundle, id="good", jobs=["124"]))
        for argv in (["status", "rec"], ["cancel", "rec", "--no-wait"], ["runs"], ["runs", "--json"]):
            code, out, err = w.run(capsys, monkeypatch, *argv)
            assert code in (0, 1), (argv, code, err)
            _one_line_or_none(err)
            if argv[0] == "runs":
                assert "good" in out, out  # the good record is listed whatever the other holds
        _check_calls(w)
    finally:
        w.close()


# --- table: corrupted and malformed records ------------------------------------------------------

BAD = [
    ("not-json", "{not json", ""),
    ("json-list", [1, 2], ""),
    ("cut-short", '{"id": "rec", "clus', ""),
    ("missing-bundle", {"id": "rec"}, "cluster"),
    ("job-option", {"jobs": ["--user=root"]}, "jobs"),
    ("job-words", {"jobs": ["123 456"]}, "jobs"),
    ("job-number", {"jobs": [123]}, "jobs"),
    ("state-unknown", {"state": "HACKED"}, "state"),
    ("state-newline", {"state": "RUNNING\nfake line"}, "state"),
    ("scheduler", {"scheduler": "ssh"}, "scheduler"),
    ("nodes-string", {"nodes": "2"}, "nodes"),
    ("nodes-zero", {"nodes": 0}, "nodes"),
    ("local-pid-negative", {"scheduler": "local", "local": {"host": "h", "pid": -1}}, "local"),
    ("bundle-relative", {"bundle": "run"}, "bundle"),
    ("cluster-escape", {"cluster": "tc\x1b]0;owned\x07"}, "cluster"),
    ("submitted-nan", {"submitted": float("nan")}, "submitted"),
    ("grid-nested", {"grid": {"a": {"b": 1}}}, "grid"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_record_is_named_and_skipped(case, bundle, capsys, monkeypatch):
    _id, change, field = case
    w = World(bundle)
    try:
        if isinstance(change, dict):
            data = _record(w.bundle)
            data.update(change)
            if _id == "missing-bundle":
                data = change
        else:
            data = change
        w.write("rec", data)
        w.write("good", _record(w.bundle, id="good", jobs=["124"]))
        code, out, err = w.run(capsys, monkeypatch, "runs", "--cached")
        assert code == 0 and "good" in out, (out, err)
        bad_file = str(w.home / "runs" / "rec.json")
        assert f"skipped {bad_file}" in out + err, out + err
        for argv in (["status", "rec"], ["cancel", "rec", "--no-wait"]):
            code, out, err = w.run(capsys, monkeypatch, *argv)
            assert code == 1, (argv, out, err)
            _one_line_or_none(err)
            assert bad_file in err and (not field or f": {field}:" in err), err
        assert w.calls("scancel") == []
        _check_calls(w)
    finally:
        w.close()


def test_good_record_cancel_argv(bundle, capsys, monkeypatch):
    """The exact scancel call for a good record: `--`, then the run's job ids."""
    w = World(bundle)
    try:
        (w.bundle / "logs").mkdir(exist_ok=True)
        (w.bundle / "logs" / "events.jsonl").write_text(
            json.dumps({"event": "resubmitted", "job_id": "125"}) + "\n"
            + json.dumps({"event": "resubmitted", "job_id": "--user=root"}) + "\n")
        w.write("rec", _record(w.bundle))
        code, out, err = w.run(capsys, monkeypatch, "cancel", "rec", "--no-wait")
        assert code == 0, err
        assert w.calls("scancel") == [["--", "123", "125"]]
    finally:
        w.close()
