"""Helpers shared by the end-to-end tests: the tiny CLI settings and a subprocess runner."""

from __future__ import annotations

import subprocess
import sys

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
