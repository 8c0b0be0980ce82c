"""Per-step loss terms summed over an epoch, read without stalling the GPU.

On the CPU each step's terms are read at once (the values are there). On CUDA, reading a loss
right after its step makes the CPU wait for the GPU to finish before it may queue the next
step; for the small models kdpipe ships that wait was most of the step (measured on an H200:
the distill loop ran at half the speed of a loop that never read its loss). So each step's
terms are copied to pinned host memory asynchronously, and read once the GPU has got there —
usually a step or two later. The NaN/Inf guard then runs on those values: it still names the
step and the term, but on CUDA the bad update has already reached the weights in memory; it
never reaches a checkpoint, because an epoch's values are all read before one is written.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import Tensor

from kdpipe.distill.stepper import nonfinite_error


class LossLog:
    def __init__(self, deferred: bool, sums: dict[str, float] | None = None, read: int = 0):
        self.deferred = deferred
        self.sums: dict[str, float] = dict(sums or {})
        self.read = read  # steps whose values have been added to `sums`
        self._pending: deque[tuple[list[str], Tensor, torch.cuda.Event, str]] = deque()

    def add(self, terms: dict[str, Tensor | float], where: str) -> None:
        """Record one step's terms (`where` names the step for the guard's message). Tensors
        are read as described above; plain numbers (a method's own host-side figures) are
        summed as they come."""
        tensors: dict[str, Tensor] = {}
        for k, v in terms.items():
            if isinstance(v, Tensor):
                tensors[k] = v
            else:
                self.sums[k] = self.sums.get(k, 0.0) + v
        names = list(tensors)
        values = torch.stack([tensors[k].detach().float().reshape(()) for k in names])
        if not self.deferred:
            self._take(names, values.tolist(), where)
            return
        host = torch.empty(len(names), dtype=torch.float32, pin_memory=True)
        host.copy_(values, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self._pending.append((names, host, done, where))
        while self._pending and self._pending[0][2].query():  # what the GPU has finished
            self._pop()

    def flush(self) -> dict[str, float]:
        """Wait for every pending step and return the sums."""
        while self._pending:
            self._pending[0][2].synchronize()
            self._pop()
        return self.sums

    def means(self) -> dict[str, float]:
        return {k: v / max(self.read, 1) for k, v in self.sums.items()}

    def _pop(self) -> None:
        names, host, _, where = self._pending.popleft()
        self._take(names, host.tolist(), where)

    def _take(self, names: list[str], values: list[float], where: str) -> None:
        for k, v in zip(names, values, strict=True):
            if not math.isfinite(v):
                raise nonfinite_error(k, v, where)
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.read += 1
