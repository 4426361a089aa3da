"""Cross-file rules: read a rendered run folder back and check its files against each other
and against the Job (sbatch <-> launch.sh <-> accelerate config <-> recipe.yaml).

The renderer writes all of these from one Job, so a failure here means a template or a
hand edit broke an invariant that real runs depend on (user-pains 1, 2, 5, 6, 9, 14, 19).
Pure Python: runs on login nodes.
"""

from __future__ import annotations

import re
from pathlib import Path

from hpctune import yamlfile
from hpctune.checks import Finding


def _sbatch_directives(text: str) -> tuple[dict[str, str], list[str]]:
    """#SBATCH options before the first command, and any that come after it (ignored by Slurm)."""
    before: dict[str, str] = {}
    after: list[str] = []
    seen_command = False
    for line in text.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            m = re.match(r"#SBATCH\s+--([a-z\-]+)(?:=(\S+))?", stripped)
            if m:
                (after.append(m.group(1)) if seen_command else before.__setitem__(m.group(1), m.group(2) or ""))
        elif stripped and not stripped.startswith("#"):
            seen_command = True
    return before, after


def check_bundle(bundle: str | Path, job) -> list[Finding]:
    """Findings for one rendered run folder (empty when every invariant holds)."""
    bundle = Path(bundle)
    src = str(bundle)
    out: list[Finding] = []

    def bad(rule: str, where: str, message: str, fix: str = "re-render with hpctune render") -> None:
        out.append(Finding(rule, "error", f"{src}/{where.split(':')[0]}", where.split(":", 1)[-1], message, fix))

    acc = yamlfile.read(bundle / "accelerate_config.yaml")
    rec = yamlfile.read(bundle / "recipe.yaml")
    sbatch_text = (bundle / "job.sbatch").read_text()
    launch = (bundle / "launch.sh").read_text()
    directives, late = _sbatch_directives(sbatch_text)
    tr = rec.get("training", {})
    ds = acc.get("deepspeed_config") or {}

    if late:
        bad("sbatch-directives-first", f"job.sbatch:--{late[0]}", "#SBATCH directive after the first command: Slurm ignores it")
    if "$" in "".join(f"{k}={v}" for k, v in directives.items()):
        bad("sbatch-literal", "job.sbatch:#SBATCH", "#SBATCH lines are not shell-expanded: a $VARIABLE stays literal")
    if directives.get("ntasks-per-node") != "1":
        bad("one-task-per-node", "job.sbatch:--ntasks-per-node", "must be 1: one launcher per node starts one process per GPU")
    if str(acc.get("num_machines")) != directives.get("nodes"):
        bad("nodes-agree", "accelerate_config.yaml:num_machines",
            f"{acc.get('num_machines')} but job.sbatch asks for --nodes={directives.get('nodes')}")
    if acc.get("num_processes") != job.num_processes:
        bad("processes-agree", "accelerate_config.yaml:num_processes",
            f"{acc.get('num_processes')} but {job.nodes} node(s) x {job.procs_per_node} = {job.num_processes}")
    gpus = directives.get("gpus-per-node")
    if job.gpus_per_node and gpus != str(job.procs_per_node):
        bad("gpus-agree", "job.sbatch:--gpus-per-node", f"{gpus} but accelerate starts {job.procs_per_node} processes per node")
    if acc.get("mixed_precision") != rec.get("precision"):
        bad("precision-agree", "accelerate_config.yaml:mixed_precision",
            f"{acc.get('mixed_precision')!r} but recipe.yaml precision is {rec.get('precision')!r}")
    if acc.get("distributed_type") == "DEEPSPEED":
        if ds.get("gradient_accumulation_steps") != tr.get("gradient_accumulation_steps"):
            bad("grad-accum-agree", "accelerate_config.yaml:deepspeed_config.gradient_accumulation_steps",
                f"{ds.get('gradient_accumulation_steps')!r} but training.gradient_accumulation_steps is "
                f"{tr.get('gradient_accumulation_steps')!r}: the run would stop with a mismatch error")
        if ds.get("gradient_clipping") != tr.get("max_grad_norm"):
            bad("clipping-agree", "accelerate_config.yaml:deepspeed_config.gradient_clipping",
                f"{ds.get('gradient_clipping')!r} but training.max_grad_norm is {tr.get('max_grad_norm')!r}")
        if acc.get("num_machines", 1) > 1 and ds.get("deepspeed_multinode_launcher") != "standard":
            bad("standard-launcher", "accelerate_config.yaml:deepspeed_config.deepspeed_multinode_launcher",
                "must be 'standard' on Slurm (pdsh needs passwordless SSH between nodes)")
        if ds.get("zero_stage") == 3 and not ds.get("zero3_save_16bit_model"):
            bad("save-16bit", "accelerate_config.yaml:deepspeed_config.zero3_save_16bit_model", "ZeRO-3 would save an empty adapter")
        if ds.get("zero_stage") != rec.get("deepspeed", {}).get("zero_stage"):
            bad("stage-agree", "accelerate_config.yaml:deepspeed_config.zero_stage", "differs from recipe.yaml deepspeed.zero_stage")
    if "SLURM_NODEID" in sbatch_text:
        bad("rank-per-node", "job.sbatch:SLURM_NODEID", "the batch script expands the node rank once: every node would get rank 0")
    if "$SLURM_NODEID" not in launch:
        bad("rank-per-node", "launch.sh:--machine_rank", "launch.sh does not read the node rank from SLURM_NODEID")
    if acc.get("num_machines", 1) > 1:
        for flag in ("--rdzv_backend", "--main_process_ip", "--machine_rank"):
            if flag not in launch:
                bad("launch-flags", f"launch.sh:{flag}", "missing: accelerate 1.15 ignores rdzv settings in its YAML; pass them as flags")
    if "--same_network false" in launch:
        bad("launch-flags", "launch.sh:--same_network", "--same_network is a switch: 'false' would become the script")
    return out
