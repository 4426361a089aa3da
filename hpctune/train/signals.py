"""Stop cleanly on preemption: checkpoint, then exit 0 so the job can continue later.

The protocol shared with launch.sh and the submitit dispatcher:

- launch.sh ignores SIGUSR2 before it execs ``accelerate launch`` (launchers survive it);
  this process installs its own SIGUSR2 and SIGTERM handlers, which only set a flag.
- ``StopCallback`` looks at the flag after every optimizer step and takes the maximum over
  all ranks, so every rank stops at the same step; it then asks the trainer to save a
  checkpoint and stop.
- ``run`` then writes ``<output_dir>/.hpctune-interrupted`` (rank 0) instead of a final save.

Before the first optimizer step (model loading, a JIT build of a DeepSpeed op, tokenizing)
there is nothing new to save: a signal then ends the attempt cleanly instead. The ranks
check the flag together at fixed points of the start-up (``check_startup``: every rank
reaches them in the same order, so they agree) and raise ``StartupInterrupted``; and when
the signal broke something on its way (Slurm signals every process of the step: a compiler
that DeepSpeed started dies of it), ``run`` turns that failure into the same clean end,
because a signal came and no step was done (``interrupted_startup``). Either way rank 0
writes the marker with ``"phase": "startup"`` and the run exits 0; the host side continues
the job (requeue or resubmission), and this attempt counts as one.

Test hook: ``HPCTUNE_STOP_AFTER_STEPS=N`` makes the callback act as if a signal arrived at
step N (exactly N: a run resumed from a later checkpoint is not stopped again) (tests use it to interrupt a run at a known step).
"""

from __future__ import annotations

import os
import signal

from hpctune.train import dist, timeline

STOP_ENV = "HPCTUNE_STOP_AFTER_STEPS"
_state = {"signal": None, "stepped": False}


class StartupInterrupted(Exception):
    """A stop signal came before this attempt's first optimizer step (raised on every rank)."""

    def __init__(self, phase: str):
        super().__init__(f"{received() or 'a stop signal'} during start-up ({phase}), before the first optimizer step")
        self.phase = phase


def _handler(signum, frame):  # noqa: ARG001 - signal handler signature
    _state["signal"] = signal.Signals(signum).name


def install() -> dict:
    """Catch SIGUSR2 and SIGTERM (main thread only); a second SIGTERM still stops at once.

    Returns the previous handlers, for ``restore``.
    """
    previous = {signal.SIGUSR2: signal.getsignal(signal.SIGUSR2), signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    reset()
    signal.signal(signal.SIGUSR2, _handler)

    def term(signum, frame):
        if _state["signal"] == "SIGTERM":
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        _handler(signum, frame)

    signal.signal(signal.SIGTERM, term)
    return previous


def restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def received() -> str | None:
    return _state["signal"]


def reset() -> None:
    _state["signal"] = None
    _state["stepped"] = False


def mark_stepped() -> None:
    """This attempt finished an optimizer step: from now on a signal means save and stop."""
    _state["stepped"] = True


def stepped() -> bool:
    return _state["stepped"]


def check_startup(phase: str) -> None:
    """At a start-up point every rank reaches: stop together if any rank was signalled."""
    if not _state["stepped"] and dist.max_int(int(received() is not None)):
        raise StartupInterrupted(phase)


def interrupted_startup(exc: BaseException | None = None) -> bool:
    """The attempt ends because of a stop signal before its first step (also when the signal
    broke something on its way: a killed compiler, a peer that left)."""
    return isinstance(exc, StartupInterrupted) or (received() is not None and not _state["stepped"])


def make_callback():
    from transformers import TrainerCallback

    class StopCallback(TrainerCallback):
        """Checkpoint and stop on every rank at the same step once any rank was signalled."""

        def __init__(self):
            raw = os.environ.get(STOP_ENV, "").strip()
            self.stop_at = int(raw) if raw else None
            self.stopped = False
            self.reason = None

        def on_train_begin(self, args, state, control, **kwargs):
            timeline.mark("engine and optimizer set-up")
            check_startup("DeepSpeed and optimizer set-up")  # every rank is here, after the engine's init
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if not stepped():
                timeline.mark("first optimizer step")
                if dist.is_main():
                    import sys
                    print(f"hpctune train: first optimizer step {timeline.summary()}", file=sys.stderr, flush=True)
            mark_stepped()
            local = received() is not None or state.global_step == self.stop_at
            if dist.max_int(int(local)):
                self.stopped = True
                self.reason = received() or (f"{STOP_ENV}={self.stop_at}" if local else "another rank was signalled")
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopCallback()
