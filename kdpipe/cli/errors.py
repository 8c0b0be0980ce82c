"""How any failure of a command becomes one `error:` line, a `hint:` line and an exit code
(2: a usage or config error the user can fix; 1: a broken budget, a failed run) — never a
traceback unless --debug."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from kdpipe import ui
from kdpipe.errors import KdpipeError
from kdpipe.stopping import Stopped


def reader_gone() -> int:
    """The reader of stdout stopped (`kdpipe predict ... | head -1`): stop quietly, exit 1 —
    what rich does when its own output meets a closed pipe — not "internal error:
    BrokenPipeError". Later writes (the interpreter's last flush) go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def _fail(message: str, hint: str, code: int) -> None:
    ui.error(message, hint)
    raise typer.Exit(code)


@contextmanager
def errors_reported(debug: bool) -> Iterator[None]:
    """Turn kdpipe's errors into one line plus a hint; anything else is an internal error."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KdpipeError as e:
        if debug:
            traceback.print_exc()
        if left_to_rank_0(e):
            raise typer.Exit(e.exit_code) from None  # rank 0 says it for every rank
        named = e.agreed_from is not None  # the verdict's message names its rank already
        _fail(("" if named else ui.rank_prefix()) + e.message, e.hint, e.exit_code)
    except Stopped as e:  # a signal (stopping.py); under torchrun rank 0 says it for all
        if os.environ.get("RANK", "0") != "0":
            raise typer.Exit(e.exit_code) from None
        _fail(e.message, e.hint, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", "finished stages are kept; run the same command again to resume", 130)
    except BrokenPipeError:
        raise typer.Exit(reader_gone()) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if debug:
            traceback.print_exc()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # not a bug
            _fail(
                f"cannot write {e.filename or 'a file'}: {e.strerror}",
                "free space on that disk, or point --out (or $KDPIPE_CACHE) elsewhere; "
                "finished stages and the last checkpoint are kept: run the same command again "
                "to resume",
                1,
            )
        if isinstance(e, OSError) and e.filename and e.strerror:  # a path the system refused
            _fail(
                f"cannot use {e.filename}: {e.strerror}",
                "check that path: a file where a file is expected, in a folder kdpipe may use",
                2,
            )
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if out_of_memory(e):  # the most common failure on a GPU, and not a bug either
            _fail(
                f"out of memory: {first or type(e).__name__}",
                "use smaller batches or images (--batch-size is the global batch; "
                "--image-size; --batch-sizes for profiling); finished stages and the last "
                "checkpoint are kept",
                1,
            )
        gone = [s for s in PEER_GONE if s in str(e)] if "WORLD_SIZE" in os.environ else []
        if gone:  # the transport's symptom, not its paragraph of advice
            _fail(
                f"lost contact with another process of this run ({gone[0]})",
                "that process failed or was stopped (its own error says why); finished stages "
                "and the last checkpoint are kept: run the same command again to resume, or "
                "let --max-restarts N do it",
                1,
            )
        _fail(f"internal error: {type(e).__name__}: {first}", "rerun with --debug and report it", 1)


def left_to_rank_0(e: KdpipeError) -> bool:
    """Whether this process of a torchrun job keeps quiet about `e` because rank 0 reports it:
    an error every rank raises alike. One decided from the options and files is alike on one
    machine, and on several once the ranks found their inputs the same (rank_inputs.py).
    Before that, the first process of each other machine reports its own too: that machine's
    files may differ (a weights file or dataset missing there), and rank 0 would only wait
    for it."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        return False
    if e.agreed_from is not None:  # what rank N found: rank N says it too, on its machine
        return not ui.several_machines() or rank != str(e.agreed_from)
    if not e.everywhere:
        return False
    return not ui.speaks_for_its_machine()


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
