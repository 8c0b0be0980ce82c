"""Fault injection for the crash-and-resume tests: KDPIPE_FAULT=POINT:N kills this process
with SIGKILL the N-th time execution reaches POINT. Points: `step` (after an optimizer step),
`epoch` (after an epoch's checkpoint is on disk), `checkpoint` (half-way through writing a
checkpoint, before its rename). Unset in normal use, where it costs one dict lookup."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def reached(point: str) -> None:
    spec = os.environ.get("KDPIPE_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
