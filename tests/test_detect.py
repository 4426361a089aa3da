"""`hpctune clusters detect` and `clusters validate`.

Parser tests read outputs captured from the project's test Slurm (tests/fixtures/slurm/:
`scontrol show partition|node [-o]`, `scontrol show config`, `sinfo`, with the default
shape of bin/testcluster; the extra-partition-* files were captured while a partition
`longq` (n[1-2],t4-1, MaxTime=UNLIMITED, MaxNodes=UNLIMITED) existed). The LIVE tests
reshape the real cluster through bin/testcluster's TC_* knobs, detect it, and submit the
tiny recipe with the detected profile; they do not skip when Slurm is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpctune import detect, gpus, schema, yamlfile
from hpctune.errors import ConfigError, RunError
from hpctune.profile import ClusterProfile
from hpctune.timefmt import parse_minutes
from tests.clitools import REPO, hpctune

FIX = Path(__file__).parent / "fixtures" / "slurm"
TESTCLUSTER = REPO / "bin" / "testcluster"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def default_cluster() -> detect.Cluster:
    return detect.parse_cluster(fixture("default-partitions.txt"), fixture("default-nodes.txt"),
                                fixture("default-config.txt"))


def extra_cluster() -> detect.Cluster:
    return detect.parse_cluster(fixture("extra-partition-partitions.txt"), fixture("extra-partition-nodes.txt"),
                                fixture("default-config.txt"))


def load_text(text: str, source: str = "detected.yaml") -> ClusterProfile:
    """Load rendered profile text as hpctune does (schema + cross-field checks)."""
    from hpctune import profile
    p = schema.load(ClusterProfile, yamlfile.loads(text), source)
    p.source = source
    profile.validate(p)
    return p


# ------------------------------------------------------------------ parsing (captured output)


def test_parse_kv_values_with_spaces_and_equals():
    n1 = next(r for r in detect.parse_records(fixture("default-nodes.txt")) if r["NodeName"] == "n1")
    assert n1["OS"].startswith("Linux ") and "#1 SMP" in n1["OS"]  # spaces inside a value
    assert n1["CfgTRES"] == "cpu=4,mem=11000M,billing=4,gres/gpu=2"  # '=' inside a value
    assert n1["RealMemory"] == "11000" and n1["CPUTot"] == "4" and n1["Gres"] == "gpu:2"
    assert "cpu" not in n1 and "mem" not in n1


def test_one_line_and_multi_line_forms_agree():
    one = {r["PartitionName"]: r for r in detect.parse_records(fixture("default-partitions.txt"))}
    multi = {r["PartitionName"]: r for r in detect.parse_records(fixture("default-partitions-multiline.txt"))}
    assert one == multi
    n1_one = next(r for r in detect.parse_records(fixture("default-nodes.txt")) if r["NodeName"] == "n1")
    [n1_multi] = detect.parse_records(fixture("default-nodes-multiline.txt"))
    for key in ("CPUTot", "RealMemory", "Gres", "Partitions", "OS", "CfgTRES"):
        assert n1_multi[key] == n1_one[key], key


def test_parse_config():
    cfg = detect.parse_config(fixture("default-config.txt"))
    assert cfg["ClusterName"] == "hpctune"
    assert cfg["SLURM_VERSION"].startswith("22.05")
    assert cfg["JobRequeue"] == "1"


def test_gres_variants_captured():
    """Every Gres string the test cluster advertises, as captured."""
    seen = {r["NodeName"]: r["Gres"] for r in detect.parse_records(fixture("default-nodes.txt"))}
    assert {seen["n1"], seen["h100-1"], seen["a100-1"], seen["a40g-1"], seen["t4-1"]} == {
        "gpu:2", "gpu:h100:8", "gpu:a100:8", "gpu:a100:4", "gpu:t4:4"}
    assert detect.parse_gres(seen["n1"]) == (2, [])
    assert detect.parse_gres(seen["h100-1"]) == (8, ["h100"])
    assert detect.parse_gres(seen["a100-1"]) == (8, ["a100"])
    assert detect.parse_gres(seen["a40g-1"]) == (4, ["a100"])
    assert detect.parse_gres(seen["t4-1"]) == (4, ["t4"])


@pytest.mark.parametrize("gres, expected", [
    # Forms from Slurm's documentation and sites (not producible on the test cluster,
    # whose gres.conf has no Cores= and one type per node).
    ("gpu:a100:4(S:0-1)", (4, ["a100"])),
    ("gpu:8(S:0-1)", (8, [])),
    ("gpu:tesla:2(S:0),nvme:1", (2, ["tesla"])),
    ("gpu:a100:2(S:0),gpu:v100:2(S:1)", (4, ["a100", "v100"])),
    ("gpu:a100:8(IDX:0-7)", (8, ["a100"])),
    ("mps:100,gpu:h100:4", (4, ["h100"])),
    ("(null)", (0, [])),
    ("", (0, [])),
])
def test_gres_forms(gres, expected):
    assert detect.parse_gres(gres) == expected


def test_expand_hostlist():
    assert detect.expand_hostlist("n[1-2]") == ["n1", "n2"]
    assert detect.expand_hostlist("a40g-[1-2],t4-1") == ["a40g-1", "a40g-2", "t4-1"]
    assert detect.expand_hostlist("gpu[08-10,12]") == ["gpu08", "gpu09", "gpu10", "gpu12"]


def test_parse_cluster_matches_the_advertised_shapes():
    c = default_cluster()
    assert c.name == "hpctune"
    got = {p.name: (p.shape, len(p.nodes), p.max_time, p.max_nodes, p.default) for p in c.partitions}
    S = detect.Shape
    assert got == {
        "debug": (S(2, "", 4, 11000), 2, "00:30:00", "2", True),
        "h100": (S(8, "h100", 96, 2000000), 2, "2-00:00:00", "2", False),
        "a100": (S(8, "a100", 128, 1000000), 2, "2-00:00:00", "2", False),
        "a100-40g": (S(4, "a100", 48, 500000), 2, "1-00:00:00", "2", False),
        "t4": (S(4, "t4", 32, 190000), 2, "12:00:00", "2", False),
    }


def _sinfo_minutes(limit: str) -> float:
    """sinfo's %l: 30:00 is MM:SS, 12:00:00 HH:MM:SS, 2-00:00:00 D-HH:MM:SS."""
    days, _, rest = limit.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if len(parts) == 2:
        parts = [0, *parts]
    return int(days or 0) * 1440 + parts[0] * 60 + parts[1] + parts[2] / 60


def test_parse_cluster_agrees_with_sinfo():
    """sinfo -o '%R|%D|%l|%L|%c|%m|%G|%a|%N', captured at the same time, says the same."""
    parts = {p.name: p for p in default_cluster().partitions}
    for line in fixture("default-sinfo.txt").splitlines():
        name, count, limit, _, cpus, mem, gres, avail, _ = line.split("|")
        p = parts[name]
        assert (len(p.nodes), p.shape.cpus, p.shape.ram_mb) == (int(count), int(cpus), int(mem))
        assert detect.parse_gres(gres)[0] == p.shape.gpus
        assert _sinfo_minutes(limit) == detect.slurm_minutes(p.max_time)
        assert avail == "up" and p.state == "UP"


def test_nodes_in_two_partitions_and_unlimited_limits():
    parts = {p.name: p for p in extra_cluster().partitions}
    assert sorted(parts["longq"].nodes) == ["n1", "n2", "t4-1"]
    assert sorted(parts["debug"].nodes) == ["n1", "n2"] and sorted(parts["t4"].nodes) == ["t4-1", "t4-2"]
    assert parts["longq"].max_time == "UNLIMITED" and parts["longq"].max_nodes == "UNLIMITED"
    assert len(parts["longq"].shapes) == 2 and parts["longq"].shape == parts["debug"].shape


# ------------------------------------------------------------------ the draft profile


def test_default_draft_is_the_debug_partition_with_gpu_memory_to_fill_in():
    d = detect.draft(default_cluster(), today="2026-01-01")
    text = detect.render(d)
    p = load_text(text)  # validates as is
    assert d.partition == "debug" and p.name == "hpctune"
    assert [(x.name, x.max_nodes, x.default) for x in p.partitions] == [("debug", 2, True)]
    assert parse_minutes(p.partitions[0].max_time) == 30
    assert (p.node.gpus_per_node, p.node.cpus_per_node) == (2, 4)
    assert p.node.ram_gib == pytest.approx(11000 / 1024, abs=0.01) and p.node.ram_gib <= 11000 / 1024
    assert p.node.gpu_model == "unknown" and p.node.gpu_mem_gib == detect.PLACEHOLDER_GPU_MEM_GIB
    marks = {path: kind for path, kind, _ in detect.markers(text)}
    assert marks == {"node.gpu_model": "FILL IN", "node.gpu_mem_gib": "FILL IN"}
    # the other partitions are named, with the command to describe them
    for other in ("h100", "a100", "a100-40g", "t4"):
        assert f"#   {other} " in text
    assert "# account:" in text and "# socket_ifname:" in text  # unknowable: commented out


def test_yaml_round_trip_for_every_partition():
    c = extra_cluster()
    for part in c.partitions:
        d = detect.draft(c, partition=part.name, venv="/shared/it's a venv")
        text = detect.render(d)
        assert yamlfile.loads(text) == d.data, part.name
        assert yaml.safe_load(text) == d.data  # plain PyYAML (YAML 1.1) reads it the same
        load_text(text)


@pytest.mark.parametrize("part, model, mem, mem_mark", [
    ("h100", "h100", 80, "CHECK"),  # h100 also comes with 94 GiB
    ("a100", "a100", 80, "CHECK"),
    ("a100-40g", "a100", 80, "CHECK"),  # Gres says a100: detection cannot know it is 40 GiB
    ("t4", "t4", 16, None),
])
def test_gpu_memory_from_the_gres_type(part, model, mem, mem_mark):
    text = detect.render(detect.draft(default_cluster(), partition=part))
    p = load_text(text)
    assert (p.node.gpu_model, p.node.gpu_mem_gib) == (model, mem)
    marks = {path: kind for path, kind, _ in detect.markers(text)}
    assert marks.get("node.gpu_mem_gib") == mem_mark
    assert "node.gpu_model" not in marks


def test_user_supplied_gpu_model_and_memory():
    p = load_text(detect.render(detect.draft(default_cluster(), partition="a100-40g", gpu_model="a100-40g")))
    assert (p.node.gpu_model, p.node.gpu_mem_gib) == ("a100-40g", 40)
    text = detect.render(detect.draft(default_cluster(), gpu_mem_gib=24))
    assert load_text(text).node.gpu_mem_gib == 24
    assert [path for path, _, _ in detect.markers(text)] == ["node.gpu_model"]


def test_unlimited_and_heterogeneous_partition_are_flagged():
    text = detect.render(detect.draft(extra_cluster(), partition="longq"))
    p = load_text(text)
    assert p.partitions[0].name == "longq" and p.partitions[0].default
    assert p.partitions[0].max_nodes == 3  # MaxNodes=UNLIMITED: its node count
    assert p.partitions[0].max_time == detect.UNLIMITED_MAX_TIME
    assert [x.name for x in p.partitions] == ["longq", "debug"]  # debug's nodes look the same
    marks = {path: kind for path, kind, _ in detect.markers(text)}
    assert marks["partitions[0].max_time"] == "CHECK" and marks["node"] == "CHECK"


def test_choice_of_partition():
    c = default_cluster()
    assert detect.draft(c).partition == "debug"  # the default partition has GPUs
    # default partition without GPUs: the GPU partition with the most nodes (ties: first)
    nodes = fixture("default-nodes.txt").replace("Gres=gpu:2 ", "Gres=(null) ")
    cpu_default = detect.parse_cluster(fixture("default-partitions.txt"), nodes, fixture("default-config.txt"))
    assert detect.draft(cpu_default).partition == "h100"
    d = detect.draft(cpu_default, partition="debug")
    assert d.data["node"]["gpus_per_node"] == 0 and d.data["node"]["gpu_model"] == "none"
    load_text(detect.render(d))
    with pytest.raises(ConfigError, match="no partition 'gpu'.*debug, h100"):
        detect.draft(c, partition="gpu")
    with pytest.raises(ConfigError, match="--name"):
        detect.draft(c, name="bad name")


def test_site_policies_from_slurm():
    """PreemptMode=CANCEL -> preemption.mode cancel; OverSubscribe=EXCLUSIVE -> exclusive;
    an unconfigured RealMemory (Slurm's default 1 MB) is marked FILL IN. (Captured text,
    one field edited.)"""
    parts = fixture("default-partitions.txt").replace(
        "OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP TotalCPUs=8",
        "OverSubscribe=EXCLUSIVE OverTimeLimit=NONE PreemptMode=CANCEL State=UP TotalCPUs=8")
    nodes = fixture("default-nodes.txt").replace("RealMemory=11000 ", "RealMemory=1 ")
    c = detect.parse_cluster(parts, nodes, fixture("default-config.txt"))
    text = detect.render(detect.draft(c))
    p = load_text(text)
    assert p.preemption.mode == "cancel" and p.exclusive is True
    assert ("node.ram_gib", "FILL IN") in [(path, kind) for path, kind, _ in detect.markers(text)]
    assert load_text(detect.render(detect.draft(default_cluster()))).preemption.mode == "requeue"


def test_markers_paths():
    text = "a: 1\nparts:\n  - name: x  # CHECK: one\n    t: 2 # FILL IN: two\n  - name: y\n    t: 3  # CHECK: three\n" \
           "n:\n  m: 4   # FILL IN: four\n  l:\n    - x  # CHECK: five\n# c: 1  # FILL IN: commented out\n"
    assert detect.markers(text) == [("parts[0].name", "CHECK", "one"), ("parts[0].t", "FILL IN", "two"),
                                    ("parts[1].t", "CHECK", "three"), ("n.m", "FILL IN", "four"),
                                    ("n.l[0]", "CHECK", "five")]


def test_gpu_table_names():
    for name in ("a100", "a100-40g", "h100", "h200", "l40s", "v100", "t4"):
        assert gpus.lookup(name) is not None, name
    f = gpus.from_gres_type
    assert f("nvidia_a100-sxm4-40gb").model.name == "a100-40g" and f("nvidia_a100-sxm4-40gb").memory_certain
    assert f("A100_80GB").model.name == "a100-80g"
    assert f("tesla_v100").model.name == "v100" and not f("tesla_v100").memory_certain
    assert f("a10").model.name == "a10" and f("l40s").model.name == "l40s"
    assert f("a100_3g.20gb").model is None and f("tesla").model is None and f(None).model is None


def test_run_detect_says_slurm_is_unreachable(tmp_path, monkeypatch):
    """A fake scontrol replays the stderr the real one printed with the controller
    unreachable (captured: tests/fixtures/slurm/unreachable-show-config.stderr)."""
    fake = tmp_path / "scontrol"
    fake.write_text(f"#!/bin/sh\ncat '{FIX / 'unreachable-show-config.stderr'}' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RunError) as e:
        detect.run_detect()
    assert str(e.value) == "cannot reach Slurm: slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)"
    proc = hpctune("clusters", "detect", env={"PATH": os.environ["PATH"]})
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"hpctune: error: {e.value}"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RunError, match="cannot reach Slurm: scontrol not found"):
        detect.run_detect()


def test_detect_refuses_to_overwrite(tmp_path):
    out = tmp_path / "p.yaml"
    out.write_text("keep me")
    proc = hpctune("clusters", "detect", "-o", str(out))
    assert proc.returncode == 2 and "already exists; add --force" in proc.stderr
    assert out.read_text() == "keep me"


def test_validate_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(detect.render(detect.draft(default_cluster())))
    proc = hpctune("clusters", "validate", str(good))
    assert proc.returncode == 0, proc.stderr
    assert "to fill in: node.gpu_mem_gib (GPU model unknown" in proc.stdout
    assert "to fill in: node.gpu_model" in proc.stdout
    done = tmp_path / "done.yaml"
    done.write_text(good.read_text().replace("gpu_model: unknown", "gpu_model: l40s").replace(
        "gpu_mem_gib: 16 ", "gpu_mem_gib: 48 ").replace("# FILL IN:", "#"))
    proc = hpctune("clusters", "validate", str(done))
    assert proc.returncode == 0 and "node.gpu" not in proc.stdout, proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("gpus_per_node: 2", "gpus_per_node: -2"))
    proc = hpctune("clusters", "validate", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"hpctune: error: {bad}: node.gpus_per_node: must be at least 0, got -2"


def test_detect_and_validate_stay_light():
    heavy = ("torch", "transformers", "peft", "trl", "deepspeed", "accelerate", "datasets", "submitit")
    code = ("import sys\nfrom hpctune.cli import cli\nfrom hpctune import detect\n"
            "cli.main(['clusters', 'validate', 'example-h100'], standalone_mode=False)\n"
            "cli.main(['clusters', 'detect', '--help'], standalone_mode=False)\n"
            f"fix = {str(FIX)!r}\n"
            "c = detect.parse_cluster(*(open(f'{fix}/default-{n}.txt').read() for n in ('partitions', 'nodes', 'config')))\n"
            "detect.render(detect.draft(c))\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr


# ------------------------------------------------------------------ LIVE: the real test Slurm


def _env(**overrides: str) -> dict[str, str]:
    """The environment with the default cluster shape: no TC_* knobs, no SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_") and k != "SLURM_CONF"}
    env.update(overrides)
    return env


def _run(*args: str, env=None, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=env or _env())
    assert proc.returncode == 0, f"{args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _wait_for_empty_queue(limit_s: float = 90) -> None:
    """Restarting Slurm cancels every job: give jobs of parallel work a chance to end."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%A"], capture_output=True, text=True, env=_env(), timeout=30)
        if out.returncode == 0 and not out.stdout.strip():
            return
        time.sleep(2)


def test_live_detect_reshaped_cluster(slurm, tmp_path):
    knobs = {"TC_GPUS_PER_NODE": "3", "TC_CPUS_PER_NODE": "6", "TC_MEM_MB_PER_NODE": "7001", "TC_MAX_TIME": "47"}
    out = tmp_path / "tmp" / "p.yaml"
    _wait_for_empty_queue()
    try:
        _run(str(TESTCLUSTER), "start", env=_env(**knobs))
        det = hpctune("clusters", "detect", "--partition", "debug", "-o", str(out), env=_env(), timeout=120)
        assert det.returncode == 0, det.stderr
        # what the cluster advertises, read independently of hpctune
        sinfo = _run("sinfo", "-h", "-o", "%R|%D|%l|%c|%m|%G").stdout.splitlines()
        advertised = {line.split("|")[0]: line.split("|")[1:] for line in sinfo}
        node = _run("scontrol", "show", "node", "n1").stdout
        part = _run("scontrol", "show", "partition", "debug").stdout
        val = hpctune("clusters", "validate", str(out), env=_env())
    finally:
        _run(str(TESTCLUSTER), "start")  # the default shape again, for everyone else
    assert val.returncode == 0, val.stdout + val.stderr
    assert "to fill in: node.gpu_mem_gib (GPU model unknown" in val.stdout
    p = load_text(out.read_text(), str(out))
    count, limit, cpus, mem, gres = advertised["debug"]
    assert (p.node.gpus_per_node, p.node.cpus_per_node) == (3, 6) == (detect.parse_gres(gres)[0], int(cpus))
    assert "CPUTot=6 " in node and "RealMemory=7001 " in node and "Gres=gpu:3" in node
    assert int(mem) == 7001 and p.node.ram_gib == pytest.approx(7001 / 1024, abs=0.01)
    assert p.node.ram_gib <= 7001 / 1024
    assert "MaxTime=00:47:00" in part and parse_minutes(p.partitions[0].max_time) == 47
    # debug3 (n1-n3, the same nodes plus n3: #14's node-failure test) is found with it
    assert [(x.name, x.max_nodes, x.default) for x in p.partitions] == [
        ("debug", int(count), True), ("debug3", int(advertised["debug3"][0]), False)]
    text = out.read_text()
    for other in ("h100", "a100", "a100-40g", "t4"):  # the other partitions are named
        assert f"#   {other} " in text
    assert p.name == "p"  # the file's name: -c NAME finds a profile by it (#14)
    # and the cluster is back to its default shape
    node = _run("scontrol", "show", "node", "n1").stdout
    assert "CPUTot=4 " in node and "Gres=gpu:2" in node, node


def test_live_detected_profile_submits_tiny_recipe(slurm, tmp_path):
    """Acceptance: the profile detect writes for the default test cluster, used as is,
    submits the tiny recipe and the run completes."""
    prof = tmp_path / "detected.yaml"
    det = hpctune("clusters", "detect", "-o", str(prof), env=_env(), timeout=120)
    assert det.returncode == 0, det.stderr
    assert hpctune("clusters", "validate", str(prof), env=_env()).returncode == 0
    sub = hpctune("submit", "-c", str(prof), "tiny-sft", "--set", "layout.gpus_per_node=1",
                  "--set", "training.max_steps=5", "--wait", cwd=tmp_path, env=_env(), timeout=600)
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "COMPLETED" in sub.stdout and "step 5 of 5" in sub.stdout, sub.stdout
