"""Stop requests: SIGTERM (a scheduler preempting the job, `kill`, torchrun passing its own
on), SIGINT (Ctrl-C) and SIGHUP (the terminal or ssh session closed) end a run at the next
safe point instead of wherever they land. A signal the run was started ignoring (`nohup`, a
script's background job) stays ignored.

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

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any

HANGUP: tuple[signal.Signals, ...] = (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ()
SIGNALS = (signal.SIGTERM, signal.SIGINT, *HANGUP)
DDP_CHECK_STEPS = 8  # GPUs under torchrun: ranks agree every this many steps (see `due`)
STUCK_AFTER_S = 10.0  # a signal whose handler has not run by then finds the process stuck

KEPT = "finished stages are kept; run the same command again to resume"  # a stop's hint
_pending = 0  # the signal received while deferring, not yet acted upon (0: none)
_received = 0  # the last stop signal this command got (0: none): what a later error stems from
_deferring = 0
_last_handled = float("-inf")  # when the Python handler last ran (time.monotonic)
_previous: dict[int, Any] = {}  # the handlers before `handled()`; forked children get them back
_terminal_fds: list[int] = []  # stdout / stderr when they were a terminal as `handled()` began


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
    global _pending, _last_handled, _received
    _last_handled = time.monotonic()
    _received = signum
    _leave_dead_terminal()
    if _deferring and not _pending:
        _pending = signum  # no printing here: the progress bar may be mid-draw
        return
    if _deferring and signum != signal.SIGINT:
        # Already stopping. A scheduler may send SIGTERM to every process of the job (Slurm
        # does), so a torchrun worker gets one from it and one from its launcher: only a
        # second Ctrl-C, a person insisting, stops at once (a scheduler insists with SIGKILL).
        return
    raise Stopped(signum)


def note_interrupts() -> None:
    """From the command's first instant, remember a Ctrl-C (still a KeyboardInterrupt at once)
    for `received`. One landing in the middle of an import can leave a module half-imported,
    and what fails next is not a KeyboardInterrupt: a Ctrl-C in numpy's import, within a second
    of `kdpipe run`, ended in "internal error: RecursionError: maximum recursion depth
    exceeded". Left alone when ignored (nohup) or replaced by whoever runs kdpipe in-process.

    In a process torch's launcher started, SIGTERM and SIGHUP also stop it at once with its
    line (`Stopped`) until `handled()` takes over: the launcher passes a scheduler's signal on
    at any moment, and a process still starting (its first half second) ended silently, the
    launcher exiting 143 without a word."""
    global _received
    _received = 0
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        for s in (signal.SIGTERM, *HANGUP):
            if signal.getsignal(s) is signal.SIG_DFL:
                signal.signal(s, _handle)  # not deferring: raises Stopped


def _interrupt(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    raise KeyboardInterrupt


def received() -> int:
    """The stop signal this command received and has not reported yet, 0 if none: an error
    after one is its effect."""
    return _received


def reported() -> None:
    """The stop signal's line is out: nothing later needs saying of it."""
    global _received
    _received = 0


def _leave_dead_terminal() -> None:
    """A terminal that hung up (its window or ssh session closed: SIGHUP to the process, or
    the launcher's SIGTERM to a torchrun process) fails every later write with EIO: a progress
    bar's next draw, or the stop's own message, would end the run before its checkpoint or
    with a traceback. What went to it goes nowhere from now on; a live terminal (`kill -HUP`),
    a file or a pipe is kept."""
    gone = [fd for fd in _terminal_fds if not os.isatty(fd)]  # hung up: its ioctls fail
    if not gone:
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in gone:
        os.dup2(devnull, fd)
        _terminal_fds.remove(fd)
    os.close(devnull)


@contextmanager
def handled() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP become stop requests for the block (from the main thread
    only, where Python runs signal handlers), unless the process was started ignoring them;
    the previous handlers come back after it."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _previous.update({s: signal.getsignal(s) for s in SIGNALS})
    for s in SIGNALS:
        if _previous[s] is not signal.SIG_IGN:  # ignored on purpose (nohup): left so
            signal.signal(s, _handle)
    _terminal_fds[:] = [fd for fd in (1, 2) if os.isatty(fd)]
    watchdog = _Watchdog()
    try:
        yield
    finally:
        watchdog.close()
        for signum, h in _previous.items():
            signal.signal(signum, h)
        _previous.clear()
        _terminal_fds.clear()
        _pending = 0


@contextmanager
def at_once() -> Iterator[None]:
    """SIGTERM, SIGINT and SIGHUP stop the block at once (`Stopped`: its line, exit 128 +
    signal), unless the process was started ignoring them; the previous handlers come back
    after it. For `kdpipe run --nproc`'s launcher until torch's own handlers take over as it
    starts the processes: without, a SIGTERM in its first seconds (importing torch, checking
    the options, data and models) ended it silently, status -15."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        if previous[s] is not signal.SIG_IGN:
            signal.signal(s, _handle)  # not deferring: raises Stopped
    try:
        yield
    finally:
        for signum, h in previous.items():
            signal.signal(signum, h)


class _Watchdog:
    """Ends the process when a signal's Python handler cannot run. Python runs handlers in the
    main thread between bytecodes, so a main thread stuck in one long C call (a collective
    waiting for a peer that hangs) would never act on SIGTERM — without a handler the signal
    ended it at once. Python's C-level handler writes each signal's number to the wakeup fd;
    this thread reads it and exits the process unless the Python handler has run since about
    then within STUCK_AFTER_S. Times, not counts: Python runs the handler once for signals
    that arrive together (Slurm's SIGTERM and the launcher's), while each writes a byte."""

    SLACK_S = 1.0  # the handler may run a little before this thread wakes to read the byte

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._write.setblocking(False)
        self._closed = threading.Event()
        self._old_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="kdpipe-signals", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            try:
                data = self._read.recv(64)
            except OSError:
                return
            if not data or self._closed.is_set():
                return  # closed: the run is over
            ours = [b for b in data if b in SIGNALS]
            if not ours:
                continue
            since = time.monotonic() - self.SLACK_S
            deadline = since + self.SLACK_S + STUCK_AFTER_S
            while _last_handled < since and time.monotonic() < deadline:
                if self._closed.wait(0.05):
                    return
            if _last_handled < since:
                name = signal.Signals(ours[0]).name
                with suppress(OSError):  # a terminal that hung up: the exit matters more
                    os.write(
                        2,
                        f"error: stopped by {name}: the process was stuck (waiting for another "
                        f"process?) and could not stop at a safe point within "
                        f"{STUCK_AFTER_S:.0f} s\nhint: finished stages and the last checkpoint "
                        "are kept; run the same command again to resume\n".encode(),
                    )
                os._exit(128 + ours[0])

    def close(self) -> None:
        self._closed.set()
        signal.set_wakeup_fd(self._old_fd)
        self._write.close()  # the thread's recv returns b"" and it ends
        self._thread.join(timeout=5)
        self._read.close()


def _reset_in_child() -> None:
    """A forked child (a DataLoader worker) gets the handlers from before `handled()` and no
    wakeup fd: else its own signals would look stuck to the parent's watchdog, and a SIGTERM
    from the DataLoader shutting it down would only set a flag it never reads. (A loader
    worker then takes its own handlers: `loader_worker_init`.)"""
    if not _previous:
        return
    try:
        signal.set_wakeup_fd(-1)
        for s, h in _previous.items():
            signal.signal(s, h)
    except ValueError:  # forked from another thread: it cannot set handlers
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


WORKER_GRACE_S = 30.0  # a DataLoader worker's life after a SIGTERM (see loader_worker_init)


def loader_worker_init(_worker_id: int) -> None:
    """DataLoader workers (`worker_init_fn`) leave the stop to the training process. A
    scheduler's SIGTERM, Ctrl-C or a hangup reaches every process of the job (`scancel`, a
    terminal's process group); a worker it ended made torch raise "DataLoader worker ... exited
    unexpectedly" in the training process as soon as it waited for that worker's batch,
    instead of letting the step finish and its position be checkpointed. So a worker ignores
    SIGINT, and outlives a SIGTERM or SIGHUP by WORKER_GRACE_S (Slurm's default KillWait):
    time for the training process to finish its step and stop, which shuts its workers down
    anyway. Not ignored for good: Python's multiprocessing ends leftover workers at exit with
    SIGTERM and waits for them, which hung forever on a worker that ignored it. A signal that
    came while the worker started was held back (data.loader.stops_held) and arrives here,
    when the handlers are set."""
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


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block a first signal waits for `requested()` (a training loop)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


@contextmanager
def postponed() -> Iterator[None]:
    """Within the block a first signal waits, outside a training loop too, and stops at its
    end as it would have at once: for code that an exception must not cross. Forking is
    such code (a DataLoader starting its workers): Python runs the parent's at-fork callbacks
    (logging's among them) and only prints what they raise — a stop raised there was lost,
    that rank trained on, and its peers, which had stopped, found it gone. Within a training
    loop's `deferred()` the loop acts on the signal as usual."""
    global _deferring, _pending
    if _deferring:
        yield
        return
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    signum, _pending = _pending, 0
    if signum:
        raise Stopped(signum)


def due(step: int, gpu: bool) -> bool:
    """Whether a training loop asks at this step, the same on every rank: every step in one
    process (a flag read) and on CPUs (one all-reduce of one number, ~0.1 ms beside steps of
    50 ms and more, whose length on a slow CPU could outlast a scheduler's grace period);
    every DDP_CHECK_STEPS steps on GPUs under torchrun, whose steps are short."""
    from kdpipe.parallel import distributed

    return not gpu or not distributed.current().active or step % DDP_CHECK_STEPS == 0


def requested() -> int:
    """The signal to stop on (0: none), the same on every rank: the highest any rank got.
    Every rank must call it at the same point."""
    from kdpipe.parallel import distributed

    if not distributed.current().active:
        return _pending
    import torch

    return int(distributed.max_over_ranks(torch.tensor([_pending]))[0])
