"""The error family every stage raises: one line saying what is wrong, one saying how to fix it.

The CLI turns a KdpipeError into `error: ...` / `hint: ...` on stderr and its exit code,
without a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import difflib
import errno
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path

KEPT = "finished stages are kept; run the same command again to resume"  # a stop's hint


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


def stop_line(signum: int) -> str:
    """A stop's line outside a training loop: a plain Ctrl-C is "interrupted"."""
    return "interrupted" if signum == signal.SIGINT else Stopped(signum).message


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


def reported(e: Exception) -> KdpipeError:
    """What the CLI says of an exception that is not a KdpipeError: the error of its kind the
    user can act on (a full disk, a path the system refused, memory, a peer process gone), else
    "internal error". Also how a torchrun rank tells the others why it failed its checks."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    kept = "finished stages and the last checkpoint are kept"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # not a bug
        message, code = f"cannot write {e.filename or 'a file'}: {e.strerror}", 1
        hint = f"free space on that disk, or point --out (or $KDPIPE_CACHE) elsewhere; {kept}: "
        hint += "run the same command again to resume"
    elif isinstance(e, OSError) and e.filename and e.strerror:  # a path the system refused
        message, code = f"cannot use {e.filename}: {e.strerror}", 2
        hint = "check that path: a file where a file is expected, in a folder kdpipe may use"
    elif out_of_memory(e):  # the most common failure on a GPU, and not a bug either
        message, code = f"out of memory: {first or type(e).__name__}", 1
        hint = "use smaller batches or images (--batch-size is the global batch; "
        hint += f"--image-size; --batch-sizes for profiling); {kept}"
    elif "WORLD_SIZE" in os.environ and any(s in str(e) for s in PEER_GONE):
        gone = next(s for s in PEER_GONE if s in str(e))  # the transport's symptom, not its advice
        message, code = f"lost contact with another process of this run ({gone})", 1
        hint = f"that process failed or was stopped (its own error says why); {kept}: run the "
        hint += "same command again to resume, or let --max-restarts N do it"
    else:
        message, code = f"internal error: {type(e).__name__}: {first}", 1
        hint = "rerun with --debug and report it"
    said = KdpipeError(message, hint)
    said.exit_code = code
    return said


def out_of_memory(e: BaseException) -> bool:
    """numpy's MemoryError, torch's CUDA OutOfMemoryError, or its CPU allocator's refusal."""
    torch = sys.modules.get("torch")  # never imported just to ask
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return (
        isinstance(e, MemoryError)
        or (cuda_oom is not None and isinstance(e, cuda_oom))
        or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
    )


# What gloo and NCCL say when a peer process died: the error of a rank whose partner failed,
# not a bug of its own.
PEER_GONE = (
    "Connection reset by peer",  # gloo
    "Connection closed by peer",
    "Broken pipe",
    "remote process exited or there was a network error",  # NCCL
    "Connection closed by remote peer",
)
