"""Helpers shared by the end-to-end tests: the tiny CLI settings, a subprocess runner and a
module-wide directory that goes at teardown."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults import injection as faults

TINY = [
    "--teacher",
    "resnet18",
    "--student",
    "mobilenet_v3_small",
    "--teacher-epochs",
    "3",
    "--epochs",
    "2",
    "--batch-sizes",
    "1,4",
    "--min-iters",
    "10",
    "--min-seconds",
    "0.05",
    "--precision",
    "fp32,fp16,int8",
    # The INT8 accuracy guard ranks every layer when it triggers (~50 s here); it has its
    # own tests (tests/unit/test_guard.py), so the tiny runs let any drop through.
    "--max-accuracy-drop",
    "100",
    "--quiet",
]


def kdpipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`kdpipe ARGS` in a process of its own; with KDPIPE_FAULT in `env`, the faults it names
    strike there (tests/faults)."""
    if env and "KDPIPE_FAULT" in env:
        env = faults.environment(env)
    return subprocess.run(
        [sys.executable, "-m", "kdpipe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@dataclass
class Ran:
    """What `kdpipe_here` saw: the fields of a finished `subprocess.run` the tests read."""

    returncode: int
    stdout: str
    stderr: str


def kdpipe_here(capsys: pytest.CaptureFixture[str], *args: str, env: dict | None = None) -> Ran:
    """`kdpipe ARGS` in this process, through the entry point `python -m kdpipe` calls.

    A new interpreter spends 7-11 s importing torch, torchvision, scikit-learn and onnxruntime
    on the slower CI CPUs; calls that need no process of their own (the kill and DDP tests
    do) run here. An exception that escapes instead of becoming one `error:` line fails the
    test, as a traceback would. Of `env`, the teacher cache is what commands read.
    """
    from kdpipe.entry import main

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        if env and "KDPIPE_CACHE" in env:
            mp.setenv("KDPIPE_CACHE", env["KDPIPE_CACHE"])
        with pytest.raises(SystemExit) as e:
            main(list(args))
    out, err = capsys.readouterr()
    return Ran(e.value.code if isinstance(e.value.code, int) else 0, out, err)


def run_here(*args: str, env: dict | None = None) -> Ran:
    """`kdpipe ARGS` in this process, its output captured: for commands that need no process of
    their own (gate, compare), without a new interpreter's seconds of imports. Of `env`, the
    variables that differ from this process's are set for the call."""
    from kdpipe.entry import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(out), redirect_stderr(err):
        for key, value in (env or {}).items():
            if os.environ.get(key) != value:
                mp.setenv(key, value)
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    return Ran(code, out.getvalue(), err.getvalue())


@contextmanager
def module_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A directory for a module-scoped fixture, deleted when the fixture ends rather than at
    the end of the session: CI shares its machine's disk."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stacked(ds: Any) -> tuple[Any, Any]:
    """A dataset's images and labels as two tensors (digits' splits index one shared tensor)."""
    import torch

    pairs = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([int(y) for _, y in pairs])
