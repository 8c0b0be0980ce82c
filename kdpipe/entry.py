"""The `kdpipe` command's entry point (and `python -m kdpipe`'s): it remembers a Ctrl-C from the
first instant, before the command's modules are imported, so one pressed at any moment ends in
`error: interrupted` and exit 130, never a traceback or an unrelated error (stopping.py)."""

from __future__ import annotations

import sys

from kdpipe import stopping  # the standard library only: imported in a few milliseconds


def main(argv: list[str] | None = None) -> None:
    stopping.note_interrupts()
    try:
        from kdpipe.cli import main as command  # typer, rich, the commands: ~0.1 s

        command(argv)
    except KeyboardInterrupt:  # before the command's own handling began (or after it ended)
        _interrupted()
    except Exception:
        if stopping.received():  # the interrupt, turned into another error where it landed
            _interrupted()
        raise


def _interrupted() -> None:
    # Plain text: the interrupt may have left the console's modules half-imported.
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)
