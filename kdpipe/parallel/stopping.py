"""SIGTERM (preemption), SIGINT (Ctrl-C) and SIGHUP (a closed terminal) stop a run at the next
safe point. In a training loop a first signal sets a flag: the loop finishes its step,
checkpoints and exits 128 + signal; ranks take the max of their flags. Elsewhere, and at a
second Ctrl-C, `Stopped` (a KeyboardInterrupt) is raised at once: files are written atomically.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from kdpipe.core.errors import Stopped

HANGUP: tuple[signal.Signals, ...] = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
SIGNALS = (signal.SIGTERM, signal.SIGINT, *HANGUP)
DDP_CHECK_STEPS = 8  # GPUs under torchrun: ranks agree every this many steps (see `due`)
WORKER_GRACE_S = 30.0  # a DataLoader worker's life after a SIGTERM (see loader_worker_init)

_pending = 0  # the signal received in a training loop, not yet acted upon (0: none)
_in_loop = 0  # training loops running (nested: DML's peers train within one)
_terminals: list[int] = []  # stdout / stderr when they were a terminal as `handled()` began


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
    """Writes to a terminal that hung up fail (EIO) before the checkpoint: send them nowhere."""
    for fd in [fd for fd in _terminals if not os.isatty(fd)]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        _terminals.remove(fd)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP are stop requests within the block (main thread only),
    unless ignored at start (`nohup`); the previous handlers come back."""
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
    """DataLoader workers leave a stop to the training process, whose step they would fail
    before its checkpoint: they ignore SIGINT and outlive SIGTERM or SIGHUP by WORKER_GRACE_S
    (Slurm's KillWait). A signal held back while they started (loader.stops_held) lands here."""
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
    """Whether a training loop asks at this step, alike on every rank: every step on CPUs,
    every DDP_CHECK_STEPS on GPUs (where one all-reduce is not small beside a step)."""
    from kdpipe.parallel import distributed  # torch: not for the command's first instant

    return not gpu or not distributed.current().active or step % DDP_CHECK_STEPS == 0


def requested() -> int:
    """The signal to stop on (0: none): the highest any rank got. Every rank calls it."""
    from kdpipe.parallel import distributed

    if not distributed.current().active:
        return _pending
    import torch

    return int(distributed.max_over_ranks(torch.tensor([_pending]))[0])
