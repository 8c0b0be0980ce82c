"""Fault injection for the crash-and-resume tests, from outside kdpipe's code.

KDPIPE_FAULT=POINT:N[:SIGNAL[:group]] sends this process SIGNAL (KILL by default) the N-th
time execution reaches POINT (with `group`: its whole process group, DataLoader workers
included, as `scancel` or a terminal's Ctrl-C does); with KDPIPE_FAULT_RANK=R only torchrun's
rank R does, and never after the elastic launcher restarted the processes. Points: `load` (a
training image about to load, counted in the process that loads it), `step` (after an
optimizer step), `checkpoint` (a checkpoint's bytes written, before its rename), `epoch` (an
epoch's checkpoint on disk).

`install()` wraps kdpipe's functions in this process, now for modules already imported and
as the others are imported; `sitecustomize.py` beside this file calls it at the start of every
Python process that has this folder on PYTHONPATH (helpers.faulty adds it).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

FOLDER = os.path.dirname(os.path.abspath(__file__))
_counts: dict[str, int] = {}


def strike(point: str) -> None:
    spec = os.environ.get("KDPIPE_FAULT", "")
    name, n, sig, target = (spec.split(":") + ["", "", ""])[:4]
    if name != point:
        return
    rank = os.environ.get("KDPIPE_FAULT_RANK")
    if rank is not None and rank != os.environ.get("RANK"):  # a torchrun process of that rank
        return
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return  # the first attempt only: the launcher's restarts then recover
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == int(n or 1):
        signum = signal.Signals[f"SIG{sig or 'KILL'}"]
        if target == "group":
            os.killpg(os.getpgrp(), signum)
        else:
            os.kill(os.getpid(), signum)


def _before(point: str, fn: Callable) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        strike(point)
        return fn(*args, **kwargs)

    return wrapped


def _after(point: str, fn: Callable) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        strike(point)
        return out

    return wrapped


def _trainer(m: ModuleType) -> None:
    m.IndexedDataset.__getitem__ = _before("load", m.IndexedDataset.__getitem__)
    m._Fit.step = _after("step", m._Fit.step)


def _checkpoint(m: ModuleType) -> None:
    m.torch_save_into = _after("checkpoint", m.torch_save_into)
    submit = m.Writer.submit

    def submitted(self: Any, ck: Any, state: Any, reached: str | None = None) -> None:
        submit(self, ck, state, reached)
        if reached:
            self.wait()  # on disk
            strike(reached)

    m.Writer.submit = submitted


PATCHES = {"kdpipe.distill.trainer": _trainer, "kdpipe.distill.checkpoint": _checkpoint}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)  # the real spec, found the usual way
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader if spec else None
        if loader is None:
            return None
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _patch(name, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_patched: set[str] = set()


def _patch(name: str, module: ModuleType) -> None:
    if name not in _patched:  # once per process: a second wrapper would count twice
        _patched.add(name)
        PATCHES[name](module)


def install() -> None:
    for name in PATCHES:
        if name in sys.modules:
            _patch(name, sys.modules[name])
    if not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def environment(env: dict[str, str]) -> dict[str, str]:
    """`env` with this folder on PYTHONPATH: its processes install the faults at start."""
    paths = [FOLDER, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}
