"""Rules on a rendered run folder: its files read back and checked against each other
(sbatch <-> launch.sh <-> accelerate config <-> recipe.yaml).

They run on every render, on the texts before anything is written (``render.write_bundle``),
so a template bug never reaches a node; and ``hpctune check RUN_DIR`` runs them, with the
recipe rules on its recipe.yaml, on an existing folder that may have been edited by hand
(user-pains 1, 2, 5, 6, 9, 14, 19). Pure Python: runs on login nodes.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterable

from hpctune import yamlfile
from hpctune.errors import ConfigError
from hpctune.rules.book import Finding, rule
from hpctune.run import folder as layout


class Bundle:
    """A run folder's rendered files as texts (read from disk, or fresh from the renderer)."""

    def __init__(self, path: str | Path, texts: dict[str, str]):
        self.path = str(path)
        self.texts = texts

    @classmethod
    def read(cls, path: str | Path) -> "Bundle":
        path = Path(path)
        if not (path / layout.MANIFEST).is_file():
            raise ConfigError(str(path), "", f"not an hpctune run folder (no {layout.MANIFEST})")
        texts = {}
        for name in layout.RENDERED:
            try:
                texts[name] = (path / name).read_text(encoding="utf-8")
            except OSError as e:
                raise ConfigError(str(path / name), "", f"cannot read: {e.strerror or e}") from None
        return cls(path, texts)

    def source(self, name: str) -> str:
        return f"{self.path}/{name}"

    @functools.cached_property
    def accelerate(self) -> dict:
        return yamlfile.parse(self.texts[layout.ACCELERATE], self.source(layout.ACCELERATE))

    @functools.cached_property
    def recipe_data(self) -> dict:
        return yamlfile.parse(self.texts[layout.RECIPE], self.source(layout.RECIPE))

    @functools.cached_property
    def recipe(self):
        """The typed recipe (what the node's preflight loads), for the recipe rules."""
        from hpctune import recipe as recipe_mod
        return recipe_mod.parse(self.recipe_data, self.source(layout.RECIPE))

    @functools.cached_property
    def manifest(self) -> dict:
        try:
            data = json.loads(self.texts.get(layout.MANIFEST) or "{}")
        except ValueError:
            raise ConfigError(self.source(layout.MANIFEST), "", "not valid JSON") from None
        return data if isinstance(data, dict) else {}

    @functools.cached_property
    def sbatch(self) -> tuple[dict[str, str], list[str]]:
        """#SBATCH options before the first command, and any after it (Slurm ignores those)."""
        before: dict[str, str] = {}
        after: list[str] = []
        seen_command = False
        for line in self.texts[layout.JOB_SBATCH].splitlines()[1:]:
            stripped = line.strip()
            if stripped.startswith("#SBATCH"):
                m = re.match(r"#SBATCH\s+--([a-z\-]+)(?:=(\S+))?", stripped)
                if m:
                    if seen_command:
                        after.append(m.group(1))
                    else:
                        before[m.group(1)] = m.group(2) or ""
            elif stripped and not stripped.startswith("#"):
                seen_command = True
        return before, after

    @property
    def layout(self) -> dict:
        return self.recipe_data.get("layout") or {}

    @property
    def deepspeed(self) -> dict:
        return self.accelerate.get("deepspeed_config") or {}

    @property
    def uses_deepspeed(self) -> bool:
        return self.accelerate.get("distributed_type") == "DEEPSPEED"

    @property
    def multinode(self) -> bool:
        return (self.accelerate.get("num_machines") or 1) > 1


def _bad(rule_id: str, b: Bundle, name: str, field: str, message: str,
         fix: str = "render the run folder again (hpctune render) instead of editing it") -> Finding:
    return Finding(rule_id, "error", b.source(name), field, message, fix)


S, A, L = layout.JOB_SBATCH, layout.ACCELERATE, layout.LAUNCH


@rule("sbatch-directives-first", "every #SBATCH before the first command", scope="bundle", pains=(19,))
def directives_first(b: Bundle) -> Iterable[Finding]:
    late = b.sbatch[1]
    if late:
        yield _bad("sbatch-directives-first", b, S, f"--{late[0]}", "#SBATCH directive after the first command: Slurm ignores it")


@rule("sbatch-literal", "no $VARIABLES in #SBATCH lines", scope="bundle", pains=(19,))
def sbatch_literal(b: Bundle) -> Iterable[Finding]:
    if "$" in "".join(f"{k}={v}" for k, v in b.sbatch[0].items()):
        yield _bad("sbatch-literal", b, S, "#SBATCH", "#SBATCH lines are not shell-expanded: a $VARIABLE stays literal")


@rule("one-task-per-node", "--ntasks-per-node=1: one launcher per node", scope="bundle", pains=(2,))
def one_task_per_node(b: Bundle) -> Iterable[Finding]:
    if b.sbatch[0].get("ntasks-per-node") != "1":
        yield _bad("one-task-per-node", b, S, "--ntasks-per-node", "must be 1: one launcher per node starts one process per GPU")


@rule("nodes-agree", "sbatch --nodes = accelerate num_machines = recipe.yaml layout.nodes", scope="bundle")
def nodes_agree(b: Bundle) -> Iterable[Finding]:
    machines, nodes = b.accelerate.get("num_machines"), b.sbatch[0].get("nodes")
    if str(machines) != nodes:
        yield _bad("nodes-agree", b, A, "num_machines", f"{machines} but job.sbatch asks for --nodes={nodes}")
    elif str(b.layout.get("nodes")) != nodes:
        yield _bad("nodes-agree", b, layout.RECIPE, "layout.nodes", f"{b.layout.get('nodes')} but job.sbatch asks for --nodes={nodes}")


@rule("processes-agree", "accelerate num_processes = nodes x processes per node", scope="bundle")
def processes_agree(b: Bundle) -> Iterable[Finding]:
    nodes, per_node = b.layout.get("nodes"), b.layout.get("gpus_per_node")
    if isinstance(nodes, int) and isinstance(per_node, int) and b.accelerate.get("num_processes") != nodes * per_node:
        yield _bad("processes-agree", b, A, "num_processes",
                   f"{b.accelerate.get('num_processes')} but {nodes} node(s) x {per_node} = {nodes * per_node}")


@rule("gpus-agree", "sbatch --gpus-per-node = processes per node", scope="bundle")
def gpus_agree(b: Bundle) -> Iterable[Finding]:
    gpus, per_node = b.sbatch[0].get("gpus-per-node"), b.layout.get("gpus_per_node")
    # manifest layout.gpus_per_node: GPUs asked per node (0 on CPU-only profiles). Folders
    # rendered before it was recorded are checked only when the line is there.
    on_gpus = (b.manifest.get("layout") or {}).get("gpus_per_node", gpus is not None)
    if on_gpus and gpus != str(per_node):
        yield _bad("gpus-agree", b, S, "--gpus-per-node", f"{gpus} but accelerate starts {per_node} processes per node")


@rule("precision-agree", "accelerate mixed_precision = recipe precision", scope="bundle", pains=(22,))
def precision_agree(b: Bundle) -> Iterable[Finding]:
    acc, rec = b.accelerate.get("mixed_precision"), b.recipe_data.get("precision")
    if acc != rec:
        yield _bad("precision-agree", b, A, "mixed_precision", f"{acc!r} but recipe.yaml precision is {rec!r}")


@rule("grad-accum-agree", "gradient accumulation equal in accelerate config and training args", scope="bundle", pains=(9,))
def grad_accum_agree(b: Bundle) -> Iterable[Finding]:
    tr = b.recipe_data.get("training") or {}
    if b.uses_deepspeed and b.deepspeed.get("gradient_accumulation_steps") != tr.get("gradient_accumulation_steps"):
        yield _bad("grad-accum-agree", b, A, "deepspeed_config.gradient_accumulation_steps",
                   f"{b.deepspeed.get('gradient_accumulation_steps')!r} but training.gradient_accumulation_steps is "
                   f"{tr.get('gradient_accumulation_steps')!r}: the run would stop with a mismatch error")


@rule("clipping-agree", "DeepSpeed gradient_clipping = training max_grad_norm", scope="bundle")
def clipping_agree(b: Bundle) -> Iterable[Finding]:
    tr = b.recipe_data.get("training") or {}
    if b.uses_deepspeed and b.deepspeed.get("gradient_clipping") != tr.get("max_grad_norm"):
        yield _bad("clipping-agree", b, A, "deepspeed_config.gradient_clipping",
                   f"{b.deepspeed.get('gradient_clipping')!r} but training.max_grad_norm is {tr.get('max_grad_norm')!r}")


@rule("standard-launcher", "deepspeed_multinode_launcher: standard on multi-node", scope="bundle", pains=(6,))
def standard_launcher(b: Bundle) -> Iterable[Finding]:
    if b.uses_deepspeed and b.multinode and b.deepspeed.get("deepspeed_multinode_launcher") != "standard":
        yield _bad("standard-launcher", b, A, "deepspeed_config.deepspeed_multinode_launcher",
                   "must be 'standard' on Slurm (pdsh needs passwordless SSH between nodes)")


@rule("save-16bit-agree", "ZeRO-3 in the accelerate config gathers 16-bit weights at save", scope="bundle", pains=(14,))
def save_16bit_agree(b: Bundle) -> Iterable[Finding]:
    if b.uses_deepspeed and b.deepspeed.get("zero_stage") == 3 and not b.deepspeed.get("zero3_save_16bit_model"):
        yield _bad("save-16bit-agree", b, A, "deepspeed_config.zero3_save_16bit_model", "ZeRO-3 would save an empty adapter")


@rule("stage-agree", "ZeRO stage equal in accelerate config and recipe", scope="bundle")
def stage_agree(b: Bundle) -> Iterable[Finding]:
    if b.uses_deepspeed and b.deepspeed.get("zero_stage") != (b.recipe_data.get("deepspeed") or {}).get("zero_stage"):
        yield _bad("stage-agree", b, A, "deepspeed_config.zero_stage", "differs from recipe.yaml deepspeed.zero_stage")


@rule("rank-per-node", "machine rank read per node at run time", scope="bundle", pains=(1,))
def rank_per_node(b: Bundle) -> Iterable[Finding]:
    if "SLURM_NODEID" in b.texts[S]:
        yield _bad("rank-per-node", b, S, "SLURM_NODEID", "the batch script expands the node rank once: every node would get rank 0")
    if "$SLURM_NODEID" not in b.texts[L]:
        yield _bad("rank-per-node", b, L, "--machine_rank", "launch.sh does not read the node rank from SLURM_NODEID")


@rule("launch-flags", "rdzv backend / same_network / rank passed as flags", scope="bundle", pains=(5,))
def launch_flags(b: Bundle) -> Iterable[Finding]:
    launch = b.texts[L]
    if b.multinode:
        for flag in ("--rdzv_backend", "--main_process_ip", "--machine_rank"):
            if flag not in launch:
                yield _bad("launch-flags", b, L, flag, "missing: accelerate 1.15 ignores rdzv settings in its YAML; pass them as flags")
    if "--same_network false" in launch:
        yield _bad("launch-flags", b, L, "--same_network", "--same_network is a switch: 'false' would become the script")
