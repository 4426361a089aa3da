"""Peak GPU memory per phase of a run (load, train, eval), nest-safe.

CUDA keeps one peak counter per device. A phase that resets it to measure itself erases the
peak of the phase around it: the seq2seq evaluation, nested in training, reset it, so the
"train" figure was the last evaluation's (D5); the SFT report reset it when training began,
so model loading and DeepSpeed's initialisation, QLoRA's real peak, were never reported (D8).

Here each phase owns the peak reached while it is the innermost open phase: before any reset
the counter is folded into the phase that is open, and a nested phase resets again when it
ends, so the phase around it goes on measuring only itself. The run starts in the ``load``
phase (everything before training: the model load and the engine's initialisation).
``overall`` is the peak of the whole process.

The counter is duck-typed (``peak()``, ``current()``, ``reset()``): ``CudaCounter`` on a GPU; a
plain Python stand-in in the tests, which have no GPU.
"""

from __future__ import annotations

from contextlib import contextmanager


class CudaCounter:
    """torch.cuda's allocator statistics of the current device."""

    def __init__(self, cuda):
        self.cuda = cuda

    def peak(self) -> int:
        self.cuda.synchronize()
        return self.cuda.max_memory_allocated()

    def peak_reserved(self) -> int:
        return self.cuda.max_memory_reserved()

    def current(self) -> int:
        return self.cuda.memory_allocated()

    def reset(self) -> None:
        self.cuda.synchronize()
        self.cuda.reset_peak_memory_stats()


class PhasePeaks:
    def __init__(self, counter, first: str = "load"):
        self.counter = counter
        self.stack: list[str] = [first] if first else []
        self.peaks: dict[str, int] = {}
        self.before: dict[str, int] = {}
        self.reserved: dict[str, int] = {}
        self.overall = 0

    def _fold(self) -> None:
        peak = self.counter.peak()
        self.overall = max(self.overall, peak)
        if self.stack:
            name = self.stack[-1]
            self.peaks[name] = max(self.peaks.get(name, 0), peak)
            if hasattr(self.counter, "peak_reserved"):
                self.reserved[name] = max(self.reserved.get(name, 0), self.counter.peak_reserved())

    def enter(self, name: str) -> None:
        self._fold()
        if self.stack == ["load"] and name != "load":
            self.stack = []  # the load phase ends when the first other phase begins
        self.counter.reset()
        self.stack.append(name)
        self.before.setdefault(name, self.counter.current())

    def exit(self, name: str) -> None:
        self._fold()
        if name in self.stack:
            del self.stack[len(self.stack) - 1 - self.stack[::-1].index(name):]
        self.counter.reset()

    @contextmanager
    def phase(self, name: str):
        self.enter(name)
        try:
            yield self
        finally:
            self.exit(name)

    def report(self) -> dict[str, int]:
        """Bytes: the peak of every phase seen so far, and ``overall``."""
        self._fold()
        return {**self.peaks, "overall": self.overall}


_GPU: PhasePeaks | None = None


def gpu_phases() -> PhasePeaks | None:
    """The process's phase tracker on its GPU (None without CUDA); created at first use,
    which must come before the model is loaded so that ``load`` covers the load."""
    global _GPU
    if _GPU is None:
        import torch
        if not torch.cuda.is_available():
            return None
        _GPU = PhasePeaks(CudaCounter(torch.cuda))
    return _GPU


@contextmanager
def gpu_phase(name: str):
    """``with gpu_phase("eval"): ...``: a phase of the process's tracker (nothing without CUDA)."""
    phases = gpu_phases()
    if phases is None:
        yield None
        return
    with phases.phase(name):
        yield phases
