"""What ``hpctune prepare`` does on a login or transfer node, so that jobs start without the
network and without repeating work on every rank:

- ``fetch_model``: the model and tokenizer files into the profile's Hugging Face cache
  (``snapshot_download``: the hub's own cache layout, which ``from_pretrained`` reads by hub
  id under ``HF_HUB_OFFLINE=1``). The token comes from the environment (``HF_TOKEN``, or the
  token file ``huggingface-cli login`` wrote); hpctune never writes it anywhere.
- ``fetch_dataset``: the dataset repository (only the configuration asked for) into the same
  cache; a repository that still ships a loading script is fetched as the hub's parquet export.
- ``tokenize_dataset``: the tokenized splits into ``HF_HOME/hpctune-tokenized/KEY``, read by
  every rank of every job instead of tokenizing inside the allocation.
- ``prebuild_ops``: the DeepSpeed ops the recipe will JIT-compile, built once into the shared
  extensions folder that every job copies to its node-local compile cache.

Each returns a short line for the report. Names differ on purpose from
``hpctune.prepare.prepare`` (the composition root that resolves a Job).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from hpctune import hubcache
from hpctune.errors import ConfigError, RunError
from hpctune.train import tiny

# Formats the training never reads: not downloaded (Llama repos also ship original/*.pth).
SKIP = ["*.pth", "*.pt", "original/*", "*.h5", "*.msgpack", "*.onnx", "*.ot", "*.tflite", "flax_model*",
        "tf_model*", "*.gguf", "*.ckpt"]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0]


def fetch_model(recipe) -> tuple[str, str]:
    """(model path to load, report line)."""
    name = recipe.model.model_name_or_path
    if tiny.is_builtin(name):
        return tiny.resolve(name), f"model     {name}: built in ({tiny.resolve(name)})"
    if not hubcache.is_repo_id(name):
        return name, f"model     {name}: a local folder (nothing to fetch)"
    from huggingface_hub import HfApi, snapshot_download
    skip = list(SKIP)
    if not _offline():
        try:
            files = HfApi().list_repo_files(name, revision=recipe.model.revision)
            if any(f.endswith(".safetensors") for f in files):
                skip.append("*.bin")  # both formats in the repo: safetensors is enough
        except Exception as e:  # noqa: BLE001 - gated, unknown, unreachable: snapshot_download says which
            del e
    had = hubcache.model_in_cache(None, name, recipe.model.revision)
    try:
        path = snapshot_download(name, revision=recipe.model.revision, ignore_patterns=skip)
    except Exception as e:  # noqa: BLE001
        hint = ("; a gated model needs HF_TOKEN in the environment (or `huggingface-cli login`) and access granted "
                "on its hub page") if "401" in str(e) or "403" in str(e) or "gated" in str(e).lower() else ""
        raise RunError(f"cannot fetch model {name}: {_first_line(e)}{hint}") from None
    if not hubcache.model_complete(Path(path)):
        raise RunError(f"model {name}: {path} has no complete config.json + weights after the download")
    # The nodes load it by hub id (from the cache): so does the rest of prepare, so that the
    # tokenizer, and the tokenized data's key, are the ones a node will compute.
    return name, f"model     {name}: {'already in' if had else 'fetched into'} {path}"


def fetch_dataset(recipe) -> str:
    d = recipe.data
    name = d.dataset_name
    if tiny.is_builtin(name):
        return f"dataset   {name}: built in ({tiny.resolve(name)})"
    if not hubcache.is_repo_id(name):
        return f"dataset   {name}: a local file or folder (nothing to fetch)"
    from huggingface_hub import HfApi, snapshot_download
    revision, patterns = d.dataset_revision, None
    if d.dataset_config:
        patterns = [f"{d.dataset_config}/**", f"data/{d.dataset_config}/**", "*.md", "*.json"]
    if not _offline() and not revision:
        try:
            files = HfApi().list_repo_files(name, repo_type="dataset")
            if any(f.endswith(".py") and "/" not in f for f in files):
                # datasets >= 4 cannot run a loading script: take the hub's parquet export
                revision = hubcache.PARQUET_EXPORT
                patterns = [f"{d.dataset_config or 'default'}/**"]
        except Exception as e:  # noqa: BLE001 - snapshot_download below reports the reason
            del e
    try:
        path = snapshot_download(name, repo_type="dataset", revision=revision, allow_patterns=patterns)
    except Exception as e:  # noqa: BLE001
        raise RunError(f"cannot fetch dataset {name}: {_first_line(e)}") from None
    where = f" ({revision})" if revision else ""
    return f"dataset   {name}{where}: in {path}"


def tokenize_dataset(recipe, model_path: str) -> str:
    from hpctune.train import data, model as model_mod
    tokenizer = model_mod.load_tokenizer(recipe, model_path)
    if recipe.task == "seq2seq":
        from hpctune.train import seq2seq
        train, evald = seq2seq.load_data(recipe)  # loads and checks; the loop tokenizes per run
        return f"data      {len(train)} train rows, {len(evald) if evald is not None else 0} eval rows (seq2seq: tokenized by each run)"
    folder = data.tokenized_dir(recipe, tokenizer)
    if folder is None:
        train, evald = data.load(recipe)
        return (f"data      {len(train)} train rows: read from the hub at a moving revision, so not kept tokenized "
                "(set data.dataset_revision to a commit, or let prepare fetch it)")
    cached = data.load_tokenized(folder)
    if cached is not None:
        return f"tokenized {len(cached[0])} train rows already in {folder}"
    train, evald = data.tokenize_all(recipe, tokenizer)
    if not data.save_tokenized(folder, train, evald):
        raise RunError(f"cannot write the tokenized data into {folder}")
    return f"tokenized {len(train)} train rows" + (f", {len(evald)} eval rows" if evald is not None else "") + f" into {folder}"


# DeepSpeed op builders by the name of the folder their JIT build writes.
BUILDERS = {"cpu_adam": "CPUAdamBuilder", "async_io": "AsyncIOBuilder", "deepspeed_shm_comm": "ShareMemCommBuilder"}


def ops_needed(job) -> list[str]:
    """The DeepSpeed ops this job's processes will compile just in time."""
    rec, prof = job.recipe, job.profile
    if not job.uses_deepspeed:
        return []
    ops = []
    ds = rec.deepspeed
    if ds.offload_optimizer_device in ("cpu", "nvme"):
        ops.append("cpu_adam")
    if "nvme" in (ds.offload_optimizer_device, ds.offload_param_device):
        ops.append("async_io")
    if not prof.node.gpus_per_node and job.num_processes > 1:
        ops.append("deepspeed_shm_comm")  # DeepSpeed's CPU accelerator: its shared-memory collectives
    return ops


_BUILD = """
import sys
from deepspeed.ops.op_builder import {builder}
{builder}().load()
"""


def prebuild_ops(job, shared: Path) -> list[str]:
    """Build each needed op in a temporary folder (the accelerator of the profile's nodes),
    then publish it into ``shared/KEY/`` (hpctune.train.compile_cache). Report lines."""
    from hpctune.train import compile_cache
    lines = []
    accel = "cuda" if job.profile.node.gpus_per_node else "cpu"
    for op in ops_needed(job):
        if (shared / compile_cache.key() / op).is_dir():
            lines.append(f"op        {op}: already built in {shared / compile_cache.key()}")
            continue
        with tempfile.TemporaryDirectory(prefix="hpctune-ops-") as tmp:
            env = dict(os.environ, TORCH_EXTENSIONS_DIR=tmp, DS_ACCELERATOR=accel)
            builder = BUILDERS[op]
            if accel == "cpu":
                code = _BUILD.replace("deepspeed.ops.op_builder", "deepspeed.ops.op_builder.cpu").format(builder=builder)
            else:
                code = _BUILD.format(builder=builder)
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                err = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no message"]
                lines.append(f"op        {op}: cannot be built here ({accel}): {err[0]}; the first job builds it on "
                             f"its node and publishes it to {shared}")
                continue
            compile_cache.publish(Path(tmp), shared)
            lines.append(f"op        {op}: built into {shared / compile_cache.key() / op}")
    return lines


def require_cache(profile) -> Path:
    if not profile.cache.hf_home:
        raise ConfigError(profile.source, "cache.hf_home",
                          "is not set: `hpctune prepare` fetches into the profile's shared Hugging Face cache; "
                          "set cache.hf_home to a folder every node reads (e.g. /project/NAME/hf)")
    return Path(profile.cache.home())
