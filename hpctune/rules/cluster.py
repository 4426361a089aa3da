"""Rules on the resolved Job: the recipe against this cluster's hardware, partitions,
network and preemption, and against this machine's filesystem.

The layout rules at the top are *declared*: ``job.resolve`` raises them (with these ids),
because no Job can exist for a partition that is not there or more GPUs than a node has.
They are listed here so that ``hpctune check --list`` is generated from one registry.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from hpctune import policy
from hpctune.rules.book import Finding, declare, rule

_RESOLVE = "hpctune.job.resolve"
declare("partition-exists", "the recipe's partition exists in the profile (none on a profile without a scheduler)",
        scope="job", enforced_by=_RESOLVE)
declare("partition-nodes", "nodes within the partition's MaxNodes", scope="job", enforced_by=_RESOLVE)
declare("partition-time", "time limit: a Slurm time above zero, within the partition's MaxTime", scope="job", enforced_by=_RESOLVE)
declare("node-gpus", "processes per node within the GPUs (CPU-only: the CPUs) a node has", scope="job",
        enforced_by=_RESOLVE)
declare("node-cpus", "cpus_per_task within the CPUs a node has", scope="job", enforced_by=_RESOLVE)
declare("node-memory", "mem_gib within the RAM a node has", scope="job", enforced_by=_RESOLVE)


def _recipe_error(rule_id: str, job, field: str, message: str, fix: str) -> Finding:
    return Finding(rule_id, "error", job.recipe.source, field, message, fix)


@rule("nvme-path", "NVMe offload needs a folder on a node-local disk", scope="job")
def nvme_path(job) -> Iterable[Finding]:
    ds = job.recipe.deepspeed
    if "nvme" in (ds.offload_param_device, ds.offload_optimizer_device) and not job.nvme_path:
        yield _recipe_error("nvme-path", job, "deepspeed.nvme_path", "NVMe offload is on but no folder is known",
                            "set deepspeed.nvme_path, or node.local_scratch in the cluster profile")


@rule("gpu-bf16", "T4 and V100 have no bf16", scope="job", pains=(23,))
def gpu_bf16(job) -> Iterable[Finding]:
    prof, rec = job.profile, job.recipe
    if prof.bf16:
        return
    model = prof.node.gpu_model
    if rec.precision == "bf16":
        yield _recipe_error("gpu-bf16", job, "precision", f"bf16 is not supported by {model} GPUs (cluster {prof.name!r})",
                            "set precision=fp16")
    if rec.method.type == "qlora":
        for fld in ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage_dtype"):
            if getattr(rec.method, fld) == "bfloat16":
                yield _recipe_error("gpu-bf16", job, f"method.{fld}", f"bfloat16 is not supported by {model} GPUs",
                                    f"set method.{fld}=float16")
    if rec.model.torch_dtype == "bfloat16":
        yield _recipe_error("gpu-bf16", job, "model.torch_dtype", f"bfloat16 is not supported by {model} GPUs",
                            "set model.torch_dtype=float16 or auto")


@rule("gpu-flash-attn", "FlashAttention-2 needs Ampere or newer", scope="job", pains=(23,))
def gpu_flash_attn(job) -> Iterable[Finding]:
    prof, rec = job.profile, job.recipe
    if rec.model.attn_implementation == "flash_attention_2" and not prof.flash_attention_2:
        what = f"{prof.node.gpu_model} GPUs" if prof.node.gpus_per_node else "CPU-only nodes"
        yield _recipe_error("gpu-flash-attn", job, "model.attn_implementation",
                            f"flash_attention_2 is not available on {what} (cluster {prof.name!r})",
                            "set model.attn_implementation=sdpa")


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~")) or bool(re.search(r"\.(jsonl?|parquet|csv|arrow)$", value))


# A job rule, not a recipe rule: the answer depends on the machine it runs on (the node
# checks its own filesystem in its preflight).
@rule("local-paths", "a local model or dataset path must exist (as given, or next to the recipe)", scope="job")
def local_paths(job) -> Iterable[Finding]:
    rec = job.recipe
    here = Path(rec.source).resolve().parent if rec.source else Path.cwd()
    for fld, value in (("model.model_name_or_path", rec.model.model_name_or_path),
                       ("data.dataset_name", rec.data.dataset_name)):
        p = Path(value).expanduser()
        if _looks_local(value) and not p.exists() and not (here / p).exists():
            yield _recipe_error("local-paths", job, fld, f"{value!r} does not exist",
                                "give an existing path (relative paths are relative to the recipe file) or a hub name")


@rule("multinode-network", "multi-node GPU jobs need the NCCL interface named", scope="job", pains=(3, 7))
def multinode_network(job) -> Iterable[Finding]:
    prof = job.profile
    if job.nodes > 1 and prof.node.gpus_per_node and not prof.network.socket_ifname:
        yield Finding("multinode-network", "warning", prof.source, "network.socket_ifname",
                      "not set: each node then uses the interface that routes to the head node (`ip route get`, "
                      "said in its log), usually the management Ethernet, for NCCL's and gloo's sockets",
                      "set network.socket_ifname (e.g. ib0) in the cluster profile to choose the fast network")


@rule("c10d-timeout", "c10d rendezvous joins time out on slow starts", scope="job", pains=(4,))
def c10d_timeout(job) -> Iterable[Finding]:
    if job.nodes > 1 and job.profile.rendezvous == "c10d":
        yield Finding("c10d-timeout", "warning", job.profile.source, "rendezvous",
                      "c10d joins can time out when nodes start minutes apart; static rendezvous does not",
                      "use rendezvous: static unless the site needs c10d")


@rule("resume-checkpoints", "a requeued job can only resume from checkpoints it saved", scope="job", pains=(18,))
def resume_checkpoints(job) -> Iterable[Finding]:
    tr = job.recipe.training
    mode = job.profile.preemption.mode
    if mode == "none" or job.profile.preemption.max_attempts < 2:
        return
    if tr.save_strategy == "no":
        yield Finding("resume-checkpoints", "warning", job.recipe.source, "training.save_strategy",
                      f"no checkpoints: after a time limit or preemption ({mode}) the job restarts from step 0",
                      "set training.save_strategy=steps with training.save_steps")
    elif tr.save_strategy == "epoch" and tr.num_train_epochs <= 1 and tr.max_steps < 0:
        yield Finding("resume-checkpoints", "warning", job.recipe.source, "training.save_strategy",
                      "checkpoints only at the end of the single epoch: a job stopped before it restarts from step 0",
                      "set training.save_strategy=steps with training.save_steps")


def _shipped(profile) -> bool:
    from hpctune import resources
    try:
        return Path(profile.source).resolve().parent == resources.clusters_dir().resolve()
    except (OSError, TypeError):
        return False


@rule("profile-name", "the profile's name is its file's name (-c NAME finds the file by name)", scope="job")
def profile_name(job) -> Iterable[Finding]:
    prof = job.profile
    stem = Path(prof.source).stem if prof.source else ""
    if stem and stem != prof.name:
        yield Finding("profile-name", "warning", prof.source, "name",
                      f"is {prof.name!r} but the file is {Path(prof.source).name}: runs would be recorded under "
                      f"{prof.name!r} while -c {stem} finds this file", f"set name: {stem}, or rename the file to {prof.name}.yaml")


@rule("profile-verified", "the cluster profile was proved on the cluster by `hpctune doctor`", scope="job")
def profile_verified(job) -> Iterable[Finding]:
    prof = job.profile
    if prof.scheduler != "slurm" or _shipped(prof):
        return  # the shipped profiles are examples to copy, not clusters
    v = prof.verified
    if v is None:
        yield Finding("profile-verified", "warning", prof.source, "verified",
                      "this profile was never verified on the cluster", f"run `hpctune doctor -c {prof.source}` once (a few minutes)")
    elif not v.passed:
        yield Finding("profile-verified", "warning", prof.source, "verified",
                      f"`hpctune doctor` found failures on {v.date} (job {v.job_id})",
                      f"fix them and run `hpctune doctor -c {prof.source}` again")


@rule("use-reentrant", "gradient checkpointing's use_reentrant is what the engine can run "
      "(DDP: false; PEFT + ZeRO-3: true)", scope="job")
def use_reentrant(job) -> Iterable[Finding]:
    engine = policy.Engine.planned(job.recipe, job.num_processes)
    note = policy.use_reentrant_note(job.recipe, engine)
    if note:
        runs = policy.use_reentrant(job.recipe, engine)
        yield Finding("use-reentrant", "warning", job.recipe.source, "training.use_reentrant", note,
                      f"set training.use_reentrant={'true' if runs else 'false'} so the recipe says what runs")
