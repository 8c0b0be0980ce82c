"""Stop requests: SIGTERM (a scheduler preempting the job, `kill`, torchrun passing its own
on) and SIGINT (Ctrl-C) end a run at the next safe point instead of wherever they land.

While a training loop runs, a first signal only sets a flag: the loop finishes its step,
checkpoints exactly that position and stops — the rerun resumes from there (bit-identical on
the CPU) instead of from the last epoch end or `--checkpoint-every` step, so a preempted job
loses one step, not an epoch. Under torchrun the ranks agree on it (a max over ranks after
every step on CPUs, every `DDP_CHECK_STEPS` steps on GPUs, and at epoch ends) so all stop at
the same step, even when only one of them got the signal. A request that arrives as a stage's training ends is acted upon before
the next stage starts. Outside a training loop, and at a second Ctrl-C, the stop is immediate:
`Stopped` is raised wherever the program is (every file is written to a temporary name and
renamed, so nothing is left half-written). `Stopped` derives from KeyboardInterrupt so that
no `except Exception` on the way swallows it. Exit status: 128 + the signal's number, as a
shell reports a process that the signal ended.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT)
DDP_CHECK_STEPS = 8  # GPUs under torchrun: ranks agree every this many steps (see `due`)

_pending = 0  # the signal received while deferring, not yet acted upon (0: none)
_deferring = 0


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal; `message`, `hint` and `exit_code` as KdpipeError's."""

    def __init__(self, signum: int, where: str = "", saved: bool = False) -> None:
        name = signal.Signals(signum).name
        self.message = f"stopped by {name}" + (f" {where}" if where else "")
        if saved:
            self.message += ", its checkpoint written"
        self.hint = (
            "run the same command again to resume from there"
            if saved
            else "finished stages are kept; run the same command again to resume"
        )
        self.exit_code = 128 + signum
        super().__init__(self.message)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    if _deferring and not _pending:
        _pending = signum  # no printing here: the progress bar may be mid-draw
        return
    if _deferring and signum == signal.SIGTERM:
        # Already stopping. A scheduler may send SIGTERM to every process of the job (Slurm
        # does), so a torchrun worker gets one from it and one from its launcher: only a
        # second Ctrl-C, a person insisting, stops at once (a scheduler insists with SIGKILL).
        return
    raise Stopped(signum)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM and SIGINT become stop requests for the block (from the main thread only, where
    Python runs signal handlers); the previous handlers come back after it."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handle)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _pending = 0


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a first signal waits for `requested()` (a training loop)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


def due(step: int, gpu: bool) -> bool:
    """Whether a training loop asks at this step, the same on every rank: every step in one
    process (a flag read) and on CPUs (one all-reduce of one number, ~0.1 ms beside steps of
    50 ms and more, whose length on a slow CPU could outlast a scheduler's grace period);
    every DDP_CHECK_STEPS steps on GPUs under torchrun, whose steps are short."""
    from kdpipe.distill import distributed

    return not gpu or not distributed.current().active or step % DDP_CHECK_STEPS == 0


def requested() -> int:
    """The signal to stop on (0: none), the same on every rank: the highest any rank got.
    Every rank must call it at the same point."""
    from kdpipe.distill import distributed

    if not distributed.current().active:
        return _pending
    import torch

    return int(distributed.max_over_ranks(torch.tensor([_pending]))[0])
