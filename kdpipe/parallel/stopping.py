"""SIGTERM (a scheduler's preemption), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) stop a
run at the next safe point. In a training loop a first signal sets a flag: the loop finishes
its step, checkpoints that position and exits 128 + signal (the rerun resumes there); under
torchrun the ranks take the max of their flags, so all stop at the same step. Elsewhere, and at
a second Ctrl-C, `Stopped` (a KeyboardInterrupt, which no `except Exception` swallows) is
raised at once: files are written atomically. Signals ignored at start (`nohup`) stay so.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

HANGUP: tuple[signal.Signals, ...] = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
SIGNALS = (signal.SIGTERM, signal.SIGINT, *HANGUP)
DDP_CHECK_STEPS = 8  # GPUs under torchrun: ranks agree every this many steps (see `due`)
WORKER_GRACE_S = 30.0  # a DataLoader worker's life after a SIGTERM (see loader_worker_init)

KEPT = "finished stages are kept; run the same command again to resume"  # a stop's hint
_pending = 0  # the signal received in a training loop, not yet acted upon (0: none)
_in_loop = 0  # training loops running (nested: DML's peers train within one)
_terminals: list[int] = []  # stdout / stderr when they were a terminal as `handled()` began


class Stopped(KeyboardInterrupt):
    """The run stopped on a signal; `message`, `hint` and `exit_code` as KdpipeError's."""

    def __init__(self, signum: int, where: str = "", saved: bool = False) -> None:
        name = signal.Signals(signum).name
        self.message = f"stopped by {name}" + (f" {where}" if where else "")
        if saved:
            self.message += ", its checkpoint written"
        self.hint = "run the same command again to resume from there" if saved else KEPT
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(self.message)


def said(signum: int) -> str:
    """A stop's line outside a training loop: a plain Ctrl-C is "interrupted"."""
    return "interrupted" if signum == signal.SIGINT else Stopped(signum).message


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    _leave_dead_terminals()
    if _in_loop and not _pending:
        _pending = signum  # no printing here: the progress bar may be mid-draw
        return
    if _in_loop and signum != signal.SIGINT:
        return  # Slurm's and torchrun's copies of one SIGTERM; a second Ctrl-C insists
    raise Stopped(signum)


def _leave_dead_terminals() -> None:
    """Writes to a terminal that hung up fail (EIO) and would end the run before its
    checkpoint: what went to it goes nowhere from now on."""
    for fd in [fd for fd in _terminals if not os.isatty(fd)]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        _terminals.remove(fd)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP are stop requests within the block (main thread only,
    where Python runs handlers), unless ignored at start; the previous handlers come back."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:  # ignored on purpose (nohup): left so
            signal.signal(s, _handle)
    _terminals[:] = [fd for fd in (1, 2) if os.isatty(fd)]
    try:
        yield
    finally:
        for signum, h in previous.items():
            signal.signal(signum, h)
        _terminals.clear()
        _pending = 0


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block (a training loop) a first signal waits for `requested()`."""
    global _in_loop
    _in_loop += 1
    try:
        yield
    finally:
        _in_loop -= 1


def loader_worker_init(_worker_id: int) -> None:
    """DataLoader workers (`worker_init_fn`) leave a stop to the training process: `scancel`
    or a terminal's Ctrl-C reaches every process of the job, and a worker it ended would fail
    the step before its position is checkpointed. A worker ignores SIGINT and outlives SIGTERM
    or SIGHUP by WORKER_GRACE_S (Slurm's KillWait), not for good: multiprocessing ends leftover
    workers with SIGTERM. A signal held back while it started (loader.stops_held) lands here."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, *HANGUP):
        if signal.getsignal(s) is not signal.SIG_IGN:  # else ignored on purpose (nohup)
            signal.signal(s, _end_later)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _end_later(signum: int, frame: FrameType | None) -> None:
    timer = threading.Timer(WORKER_GRACE_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


def due(step: int, gpu: bool) -> bool:
    """Whether a training loop asks at this step, alike on every rank: every step on CPUs (an
    all-reduce of one number beside steps of 50 ms and more), every DDP_CHECK_STEPS on GPUs."""
    from kdpipe.parallel import distributed  # torch: not for the command's first instant

    return not gpu or not distributed.current().active or step % DDP_CHECK_STEPS == 0


def requested() -> int:
    """The signal to stop on (0: none): the highest any rank got. Every rank calls it."""
    from kdpipe.parallel import distributed

    if not distributed.current().active:
        return _pending
    import torch

    return int(distributed.max_over_ranks(torch.tensor([_pending]))[0])
