"""Output folders (render -o / submit -o): a folder is written whole or not at all, never
through a symlink, never over something that is not a never-submitted hpctune run folder,
never inside hpctune's own files; bad targets are one line, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpctune import cli, resources
from hpctune.run import place
from tests.clitools import REPO


def render(capsys, out, *extra):
    with pytest.raises(SystemExit) as e:
        cli.main(["render", "-c", "local", "tiny-sft", "-o", str(out), *extra])
        raise SystemExit(0)
    cap = capsys.readouterr()
    return e.value.code, cap.err


def snapshot(folder: Path) -> dict:
    out = {}
    for p in sorted(folder.rglob("*")):
        st = os.lstat(p)
        out[str(p.relative_to(folder))] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def consistent(bundle: Path) -> bool:
    """Every file the manifest lists has the manifest's hash (the folder is one render)."""
    m = json.loads((bundle / "manifest.json").read_text())
    for name, sha in m["files"].items():
        if hashlib.sha256((bundle / name).read_bytes()).hexdigest() != sha:
            return False
    return True


def refused(code, err, *words):
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("hpctune: error: -o/--output: "), err
    for w in words:
        assert w in lines[0], err


def test_new_folder_then_rerender_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert render(capsys, out)[0] == 0 and consistent(out)
    before = snapshot(out)
    refused(*render(capsys, out, "--set", "training.max_steps=7"), "--force")
    assert snapshot(out) == before
    code, err = render(capsys, out, "--force", "--set", "training.max_steps=7")
    assert code == 0, err
    assert "max_steps: 7" in (out / "recipe.yaml").read_text() and consistent(out)
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no temporary folder left beside it"


@pytest.mark.parametrize("what,make", [
    ("not a run folder", lambda d: (d / "notes.txt").write_text("mine")),
    ("submitted run", lambda d: (d / "run.json").write_text("{}")),
    ("started run", lambda d: (d / "logs" / "attempts.jsonl").write_text('{"attempt": 1}\n')),
    ("checkpoints", lambda d: (d / "output" / "checkpoint-5").mkdir(parents=True)),
])
def test_never_replaced(what, make, tmp_path, capsys):
    out = tmp_path / "run"
    if what == "not a run folder":
        out.mkdir()
    else:
        assert render(capsys, out)[0] == 0
    make(out)
    before = snapshot(out)
    for extra in ((), ("--force",)):
        refused(*render(capsys, out, *extra))
        assert snapshot(out) == before


def test_symlink_target_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "link").symlink_to(victim)
    refused(*render(capsys, tmp_path / "link"), "symbolic link")
    assert list(victim.iterdir()) == []


def test_symlinks_inside_are_never_followed(tmp_path, capsys):
    """A never-submitted run folder whose launch.sh is a link to someone's file: --force
    replaces the folder; the file it pointed at is neither written nor made executable."""
    out = tmp_path / "run"
    assert render(capsys, out)[0] == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o600)
    (out / "launch.sh").unlink()
    (out / "launch.sh").symlink_to(victim)
    code, err = render(capsys, out, "--force")
    assert code == 0, err
    assert victim.read_text() == "keep me" and (victim.stat().st_mode & 0o777) == 0o600
    assert not (out / "launch.sh").is_symlink() and consistent(out)


@pytest.mark.parametrize("where", ["package", "templates", "clusters"])
def test_never_inside_hpctune(where, capsys):
    import hpctune
    base = {"package": Path(hpctune.__file__).parent, "templates": resources.templates_dir(),
            "clusters": resources.clusters_dir()}[where]
    out = base / "hpctune-test-render"
    refused(*render(capsys, out), "hpctune's own installed files")
    assert not out.exists()


def test_dev_null_and_a_file_on_the_way(tmp_path, capsys):
    refused(*render(capsys, "/dev/null"), "not a folder")
    (tmp_path / "file").write_text("x")
    refused(*render(capsys, tmp_path / "file" / "run"))
    assert (tmp_path / "file").read_text() == "x"


def test_long_name(tmp_path, capsys):
    refused(*render(capsys, tmp_path / ("n" * 300)))


def test_read_only_folder(tmp_path):
    """A folder the user may not write: one line, exit 2 (run as an unprivileged user when
    the tests run as root, for whom permissions do not apply)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    tmp_path.chmod(0o755)
    cmd = [sys.executable, "-m", "hpctune", "render", "-c", "local", "tiny-sft", "-o", str(ro / "run")]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "c")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Permission denied" in proc.stderr, proc.stderr
    assert list(ro.iterdir()) == []


# The real command line, with each file write slowed down (0.06 s) so that a kill lands while
# the folder is being written far more often than in a 0.4 s render otherwise.
_SLOW = """
import sys, time
import hpctune.run.place as place
write = place._write_file
place._write_file = lambda *a, **k: (time.sleep(0.06), write(*a, **k))
from hpctune.cli import main
main(sys.argv[1:])
"""


def _render_proc(out: Path, steps: int, slow: bool = False) -> subprocess.Popen:
    head = [sys.executable, "-c", _SLOW] if slow else [sys.executable, "-m", "hpctune"]
    return subprocess.Popen([*head, "render", "-c", "local", "tiny-sft", "-o", str(out),
                             "--force", "--set", f"training.max_steps={steps}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)


def test_concurrent_renders_land_whole(tmp_path):
    out = tmp_path / "run"
    procs = [_render_proc(out, 10 + i) for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode in (0, 2), err  # 2: another render put its folder there first
    assert consistent(out)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_killed_render_leaves_old_or_new(tmp_path):
    """SIGKILL at random moments of a re-render: the folder is always one whole render."""
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "hpctune", "render", "-c", "local", "tiny-sft", "-o", str(out)],
                   check=True, capture_output=True, cwd=REPO)
    t0 = time.monotonic()
    _render_proc(out, 5, slow=True).wait(timeout=120)
    full = time.monotonic() - t0
    rng = random.Random(13)
    outcomes = []
    for i in range(5):
        p = _render_proc(out, 20 + i, slow=True)
        time.sleep(rng.uniform(0.3, 1.0) * full)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        assert consistent(out), f"kill {i} left a mixed folder"
        new = f"max_steps: {20 + i}" in (out / "recipe.yaml").read_text()
        outcomes.append("new" if new else "old, temp left" if len(list(tmp_path.iterdir())) > 1 else "old")
    print("kills:", outcomes)
    assert "old, temp left" in outcomes, "no kill landed while the folder was being written"
    # a later render still works, and sweeps what killed renders left beside the folder
    _render_proc(out, 99).wait(timeout=120)
    assert consistent(out) and "max_steps: 99" in (out / "recipe.yaml").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_target_api(tmp_path):
    assert place.target(tmp_path / "new") == tmp_path / "new"
    with pytest.raises(Exception):
        place.target(tmp_path / "..")
