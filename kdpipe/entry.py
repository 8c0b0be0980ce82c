"""The `kdpipe` command's entry point (and `python -m kdpipe`'s): a Ctrl-C while the command's
modules are still being imported ends in `error: interrupted` and exit 130 too."""

from __future__ import annotations

import signal
import sys

from kdpipe.core import errors, torchrun  # errors: the standard library only, milliseconds


def main(argv: list[str] | None = None) -> None:
    try:
        from kdpipe.cli import main as command  # typer, rich, the commands: ~0.1 s

        command(argv)
    except KeyboardInterrupt as e:  # before the command's own handling began (or after it ended)
        signum = e.signum if isinstance(e, errors.Stopped) else signal.SIGINT
        if torchrun.is_main():  # under torchrun rank 0 says it for every rank
            sys.stderr.write(f"error: {errors.stop_line(signum)}\nhint: {errors.KEPT}\n")
        sys.exit(128 + signum)
