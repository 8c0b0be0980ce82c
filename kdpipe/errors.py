"""The error family every stage raises: one line saying what is wrong, one saying how to fix it.

The CLI turns a KdpipeError into `error: ...` / `hint: ...` on stderr and its exit code,
without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path


class KdpipeError(Exception):
    """Base of all errors kdpipe reports to users."""

    exit_code = 2
    # Raised on every rank of a torchrun job alike: rank 0 reports it, the others stay quiet.
    everywhere = False
    # The job's verdict, reached by every rank together, on what rank N found (N: this value);
    # rank 0 reports it, and rank N too when it runs on another machine (its own log).
    agreed_from: int | None = None

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class ConfigError(KdpipeError):
    """An option or config file value is invalid."""

    everywhere = True  # decided from the options and files, the same for every rank


class DataError(KdpipeError):
    """A dataset is unknown, missing or unreadable."""


class ModelError(KdpipeError):
    """A model name is unknown or its weights do not fit."""


class ExportError(KdpipeError):
    """Export or verification of an artifact failed."""


class BackendUnavailable(KdpipeError):
    """A runtime (CUDA, TensorRT, onnxruntime-gpu) is not installed or has no device."""


class TrainingError(KdpipeError):
    """Training diverged: a loss became NaN or infinite."""


class BudgetError(KdpipeError):
    """A budget was broken (gate)."""

    exit_code = 1


def closest(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The valid names nearest to a misspelt one, best first."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A hint listing the names nearest to `word`, or an empty string if none is close."""
    near = closest(word, choices)
    return f"did you mean: {', '.join(near)}?" if near else ""


def absent(path: object, folder: bool) -> str:
    """Why `path` is not the folder (or file) wanted: "does not exist", or what it is instead."""
    p = Path(str(path))
    if not p.exists():
        return "does not exist"
    if folder:
        return "is a file, not a folder" if p.is_file() else "is not a folder"
    # a device, a pipe, a socket: nothing kdpipe could read as a whole file
    return "is a folder, not a file" if p.is_dir() else "is not a regular file"


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of a third-party exception's message (its type's name if it has none),
    cut at `limit` characters: what an `error:` line quotes of onnxruntime, torch, PIL..."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]
