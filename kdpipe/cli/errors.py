"""How any failure of a command becomes one `error:` line, a `hint:` line and an exit code
(2: a usage or config error the user can fix; 1: a broken budget, a failed run) — never a
traceback unless --debug."""

from __future__ import annotations

import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from kdpipe.core import torchrun, ui
from kdpipe.core.errors import KEPT, KdpipeError, Stopped, reported, stop_line


def reader_gone() -> int:
    """The reader of stdout stopped (`kdpipe predict ... | head -1`): stop quietly, exit 1 —
    what rich does when its own output meets a closed pipe — not "internal error:
    BrokenPipeError". Later writes (the interpreter's last flush) go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def _fail(message: str, hint: str, code: int) -> NoReturn:
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
    except Stopped as e:  # a signal (stopping.py)
        _stopped(e.signum, e)
    except KeyboardInterrupt:
        _stopped(signal.SIGINT)
    except BrokenPipeError:
        raise typer.Exit(reader_gone()) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if debug:
            traceback.print_exc()
        said = reported(e)
        _fail(said.message, said.hint, said.exit_code)


def _stopped(signum: int, e: Stopped | None = None) -> NoReturn:
    """The line of a stop by `signum` (`e`'s own, which may say where it stopped), and exit
    128 + signum; under torchrun rank 0 says it for all."""
    if torchrun.is_main():
        ui.error(*((e.message, e.hint) if e else (stop_line(signum), KEPT)))
    raise typer.Exit(128 + signum) from None


def left_to_rank_0(e: KdpipeError) -> bool:
    """Whether this process of a torchrun job keeps quiet about `e` because rank 0 reports it:
    an error every rank raises alike. One decided from the options and files is alike on one
    machine, and on several once the ranks found their inputs the same (stages/inputs.py).
    Until then, the first process of each other machine reports its own too: that machine's
    files may differ (a weights file or dataset missing there), and rank 0 would only wait
    for it."""
    if torchrun.is_main():
        return False
    if e.agreed_from is not None:  # what rank N found: rank N says it too, on its machine
        return not torchrun.several_machines() or torchrun.rank() != e.agreed_from
    if not e.everywhere:
        return False
    return not ui.speaks_for_its_machine()
