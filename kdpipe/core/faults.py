"""Fault injection for the crash-and-resume tests: KDPIPE_FAULT=POINT:N[:SIGNAL[:group]] sends
this process SIGNAL (KILL by default; TERM or INT to test stopping.py) the N-th time execution
reaches POINT (with `group`: its whole process group, DataLoader workers included, as a
scheduler's `scancel` or a terminal's Ctrl-C does); with KDPIPE_FAULT_RANK=R only torchrun's
rank R does, and never after the elastic launcher restarted the processes. Points: `load` (a training image loaded, counted
in the process that loads it: a DataLoader worker counts its own), `step` (after an
optimizer step), `epoch` (after an epoch's checkpoint is on disk), `checkpoint` (half-way
through writing a checkpoint, before its rename), `launch` (`kdpipe run --nproc`'s launcher,
its checks done, before torch's launcher starts the processes), `start` (the command's first
instant, in kdpipe/entry.py). Unset in normal use, where it costs one
dict lookup."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def reached(point: str) -> None:
    spec = os.environ.get("KDPIPE_FAULT")
    if not spec:
        return
    name, n, sig, target = (spec.split(":") + ["", "", ""])[:4]
    if name != point:
        return
    rank = os.environ.get("KDPIPE_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK"):  # a torchrun process of that rank
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return  # a fault strikes the first attempt only: the launcher's restarts then recover
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        signum = signal.Signals[f"SIG{sig or 'KILL'}"]
        if target == "group":
            os.killpg(os.getpgrp(), signum)
        else:
            os.kill(os.getpid(), signum)
