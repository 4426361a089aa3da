"""Offline compute nodes: the profile's `cache` section, `hpctune prepare`, and a job that
loads its model and dataset BY HUB ID from the shared cache with no network at all.

No hub is reachable here. The cache is laid out in the hub's own format, as
``snapshot_download`` writes it (``hub/models--ORG--NAME/{refs/main, blobs/, snapshots/SHA/}``
with the snapshot's files symlinked to blobs), holding the built-in tiny Llama and tiny chat
set under made-up hub ids. The job then runs in a network namespace of its own with only a
loopback interface (`unshare --net`): any attempt to reach the hub would fail, not hang.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hpctune import hubcache, resources
from tests import tiny_assets as ta

MODEL_ID = "hpctune-test/tiny-llama"
DATA_ID = "hpctune-test/tiny-chat"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_repo(hub: Path, repo_id: str, repo_type: str, files: dict[str, Path]) -> Path:
    """One repository in huggingface_hub's cache layout: blobs by content hash, the snapshot
    of COMMIT as symlinks into them, refs/main naming COMMIT."""
    repo = hubcache.repo_folder(hub, repo_id, repo_type)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    for rel, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snap / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snap


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A profile with an offline cache, the cache in hub format, a recipe naming hub ids."""
    from hpctune.train import tiny
    root = tmp_path_factory.mktemp("offline")
    hf = root / "hf"
    model_dir, data_dir = Path(tiny.resolve(tiny.TINY_MODEL)), Path(tiny.resolve(tiny.TINY_DATASET))
    _hub_repo(hf / "hub", MODEL_ID, "model", {p.name: p for p in model_dir.iterdir() if p.is_file() and p.name != ".complete"})
    _hub_repo(hf / "hub", DATA_ID, "dataset", {f"data/{p.name}": p for p in data_dir.glob("*.jsonl")})
    prof = yaml.safe_load((resources.clusters_dir() / "local.yaml").read_text())
    prof.update(name="offline-site", cache={"hf_home": str(hf), "compile_dir": str(root / "scratch")},
                network={"offline": True})
    (root / "clusters").mkdir()
    (root / "clusters" / "offline-site.yaml").write_text(yaml.safe_dump(prof))
    recipe = ta.write_recipe(root / "recipe", {"model.model_name_or_path": MODEL_ID, "data.dataset_name": DATA_ID,
                                                "training.max_steps": 6, "training.save_steps": 3})
    return {"root": root, "hf": hf, "recipe": recipe, "env": {"HPCTUNE_CLUSTERS": str(root / "clusters"),
                                                                "HPCTUNE_HOME": str(root / "home")}}


def test_check_knows_the_model_is_in_the_cache_and_submit_refuses_when_not(site, tmp_path):
    ok = ta.hpctune("check", "-c", "offline-site", str(site["recipe"]), "--json", **site["env"])
    assert ok.returncode == 0, ok.stderr
    assert not [f for f in json.loads(ok.stdout)["findings"] if f["rule"] == "offline-cache"]

    # the same site with an empty cache: check warns, submit refuses, --force submits past it
    prof = yaml.safe_load((site["root"] / "clusters" / "offline-site.yaml").read_text())
    prof["cache"]["hf_home"] = str(tmp_path / "empty-hf")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "offline-site.yaml").write_text(yaml.safe_dump(prof))
    env = dict(site["env"], HPCTUNE_CLUSTERS=str(tmp_path / "c"))
    check = ta.hpctune("check", "-c", "offline-site", str(site["recipe"]), **env)
    assert check.returncode == 0, check.stdout
    assert "WARNING" in check.stdout and "offline-cache" in check.stdout and MODEL_ID in check.stdout
    assert "hpctune prepare -c offline-site" in check.stdout
    refused = ta.hpctune("submit", "-c", "offline-site", str(site["recipe"]), "--dry-run", "-o", str(tmp_path / "b1"), **env)
    assert refused.returncode == 2 and "offline-cache" in refused.stderr and "--force" in refused.stderr, refused.stderr
    forced = ta.hpctune("submit", "-c", "offline-site", str(site["recipe"]), "--dry-run", "--force",
                        "-o", str(tmp_path / "b2"), **env)
    assert forced.returncode == 0 and "forced past" in forced.stderr, forced.stderr


@pytest.fixture(scope="module")
def prepared(site):
    # No hub here: the hub client runs offline and finds what the cache holds.
    proc = ta.hpctune("prepare", "-c", "offline-site", str(site["recipe"]), HF_HUB_OFFLINE="1", HF_TOKEN="hf_secret_never_written",
                      **site["env"])
    assert proc.returncode == 0, proc.stderr
    return proc


def test_prepare_reports_the_cache_and_tokenizes_once(prepared, site):
    out = prepared.stdout
    snap = hubcache.snapshot(site["hf"] / "hub", MODEL_ID)
    assert f"model     {MODEL_ID}: already in {snap}" in out, out
    assert f"dataset   {DATA_ID}" in out
    tok = [p for p in (site["hf"] / hubcache.TOKENIZED).iterdir() if (p / "complete.json").is_file()]
    assert len(tok) == 1 and json.loads((tok[0] / "complete.json").read_text())["train_rows"] > 0
    assert f"into {tok[0]}" in out
    # the token from the environment is never written anywhere
    for p in site["root"].rglob("*"):
        if p.is_file() and not p.is_symlink() and p.stat().st_size < 10_000_000:
            assert b"hf_secret_never_written" not in p.read_bytes(), p


def test_offline_job_loads_by_hub_id_without_network(prepared, site):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to run the job without a network")
    bundle = site["root"] / "bundle"
    proc = ta.hpctune("render", "-c", "offline-site", str(site["recipe"]), "-o", str(bundle), **site["env"])
    assert proc.returncode == 0, proc.stderr
    launch = (bundle / "launch.sh").read_text()
    for line in (f"export HF_HOME={site['hf']}", "export HF_HUB_OFFLINE=1", "export HF_DATASETS_OFFLINE=1",
                 "export TRANSFORMERS_OFFLINE=1"):
        assert line in launch, line
    env = ta.env(**{k: v for k, v in site["env"].items()})
    for k in ("HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(k, None)
    # a network namespace with only loopback: the hub is unreachable, as on an offline node
    proc = subprocess.run(["unshare", "--net", "sh", "-c", 'ip link set lo up 2>/dev/null; exec bash "$0"',
                           str(bundle / "launch.sh")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, ta.tail(proc)
    log = proc.stderr + proc.stdout
    assert "tokenized data from" in log and str(site["hf"] / hubcache.TOKENIZED) in log
    m = ta.metrics(bundle / "output")
    assert m["status"] == "completed" and m["optimizer_steps"] == 6
    # the compile caches lived on the node's own disk, one folder per job and node, removed at the end
    assert (site["root"] / "scratch").is_dir() and not list((site["root"] / "scratch").iterdir())


def test_prepare_knows_which_ops_a_job_compiles(tmp_path):
    """The ops `hpctune prepare` pre-builds: optimizer offload needs cpu_adam, DeepSpeed on
    CPU nodes its shared-memory collectives, NVMe offload async_io; GPU LoRA none. An op
    already in the shared folder for this machine's key is not built again."""
    from hpctune.prepare import prepare
    from hpctune.train import compile_cache, fetch
    assert fetch.ops_needed(prepare("example-a100-40g", "bart-large-lora-zero3-offload").job) == ["cpu_adam"]
    assert fetch.ops_needed(prepare("example-h100", "llama2-70b-lora-zero3").job) == []
    two = prepare("local", "tiny-sft", ("layout.gpus_per_node=2", "deepspeed.zero_stage=3")).job  # CPU-only: 2 ranks
    assert fetch.ops_needed(two) == ["deepspeed_shm_comm"]
    nvme = prepare("example-a100-40g", "llama2-70b-qlora-zero3", ("deepspeed.offload_optimizer_device=nvme",
                                                                  "deepspeed.nvme_path=/local/nvme")).job
    assert fetch.ops_needed(nvme) == ["cpu_adam", "async_io"]
    shared = tmp_path / "ext"
    op = shared / compile_cache.key() / "deepspeed_shm_comm"
    op.mkdir(parents=True)
    (op / "deepspeed_shm_comm.so").write_bytes(b"\x7fELF")
    assert fetch.prebuild_ops(two, shared) == [f"op        deepspeed_shm_comm: already built in {op.parent}"]
