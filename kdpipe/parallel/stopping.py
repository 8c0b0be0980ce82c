"""Stop requests: SIGTERM (a scheduler preempting the job, `kill`, torchrun passing its own
on), SIGINT (Ctrl-C) and SIGHUP (the terminal or ssh session closed) end a run at the next
safe point instead of wherever they land.

Within a training loop a first signal only sets a flag: the loop finishes its step,
checkpoints exactly that position and exits 128 + signal; the rerun resumes there
(bit-identical on the CPU). Under torchrun the ranks take the max of their flags (after every
step on CPUs, every DDP_CHECK_STEPS steps on GPUs, and at epoch ends), so all stop at the same
step. Elsewhere, and at a second Ctrl-C, `Stopped` is raised where the program is: every file
is written to a temporary name and renamed, so nothing is left half-written. A signal the run
was started ignoring (`nohup`) stays ignored. `Stopped` derives from KeyboardInterrupt so that
no `except Exception` on the way swallows it.
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
    """What a stop by `signum` outside a training loop says: Ctrl-C before the run's own
    handling (a plain KeyboardInterrupt) is "interrupted"."""
    return "interrupted" if signum == signal.SIGINT else Stopped(signum).message


def _handle(signum: int, frame: FrameType | None) -> None:
    global _pending
    _leave_dead_terminals()
    if _in_loop and not _pending:
        _pending = signum  # no printing here: the progress bar may be mid-draw
        return
    if _in_loop and signum != signal.SIGINT:
        # Already stopping. A scheduler may send SIGTERM to every process of the job (Slurm
        # does), so a torchrun worker gets one from it and one from its launcher: only a
        # second Ctrl-C, a person insisting, stops at once.
        return
    raise Stopped(signum)


def _leave_dead_terminals() -> None:
    """A terminal that hung up fails every later write with EIO: a progress bar's next draw,
    or the stop's own line, would end the run before its checkpoint. What went to it goes
    nowhere from now on; a live terminal, a file or a pipe is kept."""
    for fd in [fd for fd in _terminals if not os.isatty(fd)]:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
        _terminals.remove(fd)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP become stop requests for the block (from the main thread
    only, where Python runs signal handlers), unless the process was started ignoring them;
    the previous handlers come back after it."""
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
    """DataLoader workers (`worker_init_fn`) leave the stop to the training process. A
    scheduler's SIGTERM, Ctrl-C or a hangup reaches every process of the job (`scancel`, a
    terminal's process group); a worker it ended made torch raise "DataLoader worker ...
    exited unexpectedly" in the training process instead of letting the step finish and its
    position be checkpointed. So a worker ignores SIGINT and outlives a SIGTERM or SIGHUP by
    WORKER_GRACE_S (Slurm's default KillWait); not for good, since Python's multiprocessing
    ends leftover workers at exit with SIGTERM and waits for them. A signal that came while
    the worker started was held back (data.loader.stops_held) and arrives here."""
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
    """Whether a training loop asks at this step, the same on every rank: every step in one
    process (a flag read) and on CPUs (one all-reduce of one number, ~0.1 ms beside steps of
    50 ms and more, whose length on a slow CPU could outlast a scheduler's grace period);
    every DDP_CHECK_STEPS steps on GPUs under torchrun, whose steps are short."""
    from kdpipe.parallel import distributed  # torch: not for the command's first instant

    return not gpu or not distributed.current().active or step % DDP_CHECK_STEPS == 0


def requested() -> int:
    """The signal to stop on (0: none), the same on every rank: the highest any rank got.
    Every rank must call it at the same point."""
    from kdpipe.parallel import distributed

    if not distributed.current().active:
        return _pending
    import torch

    return int(distributed.max_over_ranks(torch.tensor([_pending]))[0])
