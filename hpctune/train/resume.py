"""Resume by default: continue from the newest COMPLETE checkpoint in the output folder.

Found when the job starts (never fixed at submit time), so a requeued or resubmitted job
simply continues. A checkpoint counts as complete when its trainer state, model/adapter
weights and optimizer state are all there and non-empty, and, for checkpoints written by
hpctune, when the ``.hpctune-complete`` marker exists: it is written after every rank has
finished writing its part (DeepSpeed writes one optimizer shard per rank). A folder half
written by a killed job is skipped.

ZeRO-3 checkpoints hold no frozen weights: the caller builds the base model first, then
``trainer.train(resume_from_checkpoint=...)`` loads the checkpoint into it.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpctune.run import folder as layout
from hpctune.train import dist

MARKER = layout.COMPLETE
INTERRUPTED = layout.INTERRUPTED
_CKPT = layout.CHECKPOINT_NAME
_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
            "model.safetensors.index.json", "pytorch_model.bin")


def _nonempty(p: Path) -> bool:
    try:
        return p.is_file() and p.stat().st_size > 0
    except OSError:
        return False


def _deepspeed_state_ok(ckpt: Path) -> bool:
    latest = ckpt / "latest"
    if not _nonempty(latest):
        return False
    tag = latest.read_text().strip()
    shards = list((ckpt / tag).glob("*optim_states.pt"))
    return bool(shards) and all(_nonempty(s) for s in shards)


def is_complete(ckpt: Path, require_marker: bool) -> bool:
    m = _CKPT.match(ckpt.name)
    if not m or not ckpt.is_dir():
        return False
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if state.get("global_step") != int(m.group(1)):
        return False
    if not any(_nonempty(ckpt / w) for w in _WEIGHTS):
        return False
    # optimizer.pt: the Trainer; optimizer.bin: accelerate's save_state (the seq2seq loop)
    if not (_nonempty(ckpt / "optimizer.pt") or _nonempty(ckpt / "optimizer.bin") or _deepspeed_state_ok(ckpt)):
        return False
    return (ckpt / MARKER).is_file() or not require_marker


def checkpoints(output_dir: Path) -> list[Path]:
    """All ``checkpoint-N`` folders, oldest first."""
    return layout.Output(output_dir).checkpoints()


def latest_complete(output_dir: Path) -> Path | None:
    ckpts = checkpoints(Path(output_dir))
    # Once hpctune wrote markers here, an unmarked folder is one whose save did not finish.
    require_marker = any((c / MARKER).is_file() for c in ckpts)
    for ckpt in reversed(ckpts):
        if is_complete(ckpt, require_marker):
            return ckpt
    return None


def resume_point(output_dir: Path) -> Path | None:
    """The checkpoint every rank resumes from: rank 0 chooses it and tells the others.

    Each rank looking on its own can disagree on a shared filesystem that caches attributes
    (NFS, Lustre): one rank sees the newest checkpoint's marker, another does not yet, and
    the two then load different states or hang in DeepSpeed's collective load. A collective:
    every rank must call it.
    """
    chosen = latest_complete(Path(output_dir)) if dist.is_main() else None
    chosen = dist.broadcast_object(str(chosen) if chosen else None)
    return Path(chosen) if chosen else None


def make_marker_callback():
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        """After a checkpoint is saved on every rank, rank 0 marks it complete."""

        def on_save(self, args, state, control, **kwargs):
            dist.barrier()
            if dist.is_main():
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    layout.Output.mark_complete(ckpt, state.global_step)
            return control

    return CheckpointMarker()


def clear_interrupted(output_dir: Path) -> None:
    layout.Output(output_dir).clear_interrupted()


def write_interrupted(output_dir: Path, global_step: int, reason: str, checkpoint: Path | None,
                      phase: str = "training", detail: str = "") -> Path:
    return layout.Output(output_dir).write_interrupted(global_step, reason, checkpoint, phase, detail)
