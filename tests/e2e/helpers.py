"""Helpers shared by the end-to-end tests: the tiny CLI settings, a subprocess runner and a
module-wide directory that goes at teardown."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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
    "--quiet",
]


def kdpipe(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdpipe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@contextmanager
def module_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A directory for a module-scoped fixture, deleted when the fixture ends rather than at
    the end of the session: CI shares its machine's disk (docs/benchmarks.md, session 10)."""
    path = factory.mktemp(name)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
