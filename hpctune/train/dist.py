"""Small helpers over torch.distributed that also work when it is not initialised."""

from __future__ import annotations

import os
import sys


def _dist():
    dist = sys.modules.get("torch.distributed")  # not imported yet: surely not initialised
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


def shutdown() -> None:
    """Leave together: a barrier, then destroy the process group. A rank that exits while
    a peer is still tearing down gloo/DeepSpeed makes that peer abort (SIGABRT), and the
    launcher then reports a finished (or checkpointed) run as failed."""
    d = _dist()
    if d:
        try:
            d.barrier()
            d.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit; the run's result is already written
            pass


def _device(d):
    import torch
    if d.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_int(value: int) -> int:
    """The maximum of ``value`` over all ranks (the value itself when not distributed)."""
    d = _dist()
    if not d:
        return value
    import torch
    t = torch.tensor([value], dtype=torch.int64, device=_device(d))
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    d = _dist()
    if not d:
        return [obj]
    out = [None] * d.get_world_size()
    d.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself when not distributed)."""
    d = _dist()
    if not d:
        return obj
    box = [obj if d.get_rank() == src else None]
    d.broadcast_object_list(box, src=src)
    return box[0]
