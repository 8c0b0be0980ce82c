"""The `kdpipe` command's entry point (and `python -m kdpipe`'s): it remembers a Ctrl-C from the
first instant, before the command's modules are imported, so one pressed at any moment ends in
`error: interrupted` and exit 130, never a traceback or an unrelated error (stopping.py)."""

from __future__ import annotations

import signal
import sys

from kdpipe.core import faults, torchrun
from kdpipe.parallel import stopping  # the standard library only: a few milliseconds


def main(argv: list[str] | None = None) -> None:
    stopping.note_interrupts()
    try:
        faults.reached("start")
        from kdpipe.cli import main as command  # typer, rich, the commands: ~0.1 s

        command(argv)
    except KeyboardInterrupt as e:  # before the command's own handling began (or after it ended)
        _stopped(e.signum if isinstance(e, stopping.Stopped) else signal.SIGINT)
    except Exception:
        if stopping.received():  # the interrupt, turned into another error where it landed
            _stopped(stopping.received())
        raise


def _stopped(signum: int) -> None:
    # Plain text: the signal may have left the console's modules half-imported. Under
    # torchrun rank 0 says it for every rank.
    if torchrun.is_main():
        sys.stderr.write(f"error: {stopping.said(signum)}\nhint: {stopping.KEPT}\n")
    sys.exit(128 + signum)
