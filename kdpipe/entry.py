"""The `kdpipe` command's entry point (and `python -m kdpipe`'s): a Ctrl-C while the command's
modules are still being imported ends in `error: interrupted` and exit 130 too."""

from __future__ import annotations

import signal
import sys

from kdpipe.core import torchrun
from kdpipe.parallel import stopping  # the standard library only: a few milliseconds


def main(argv: list[str] | None = None) -> None:
    try:
        from kdpipe.cli import main as command  # typer, rich, the commands: ~0.1 s

        command(argv)
    except KeyboardInterrupt as e:  # before the command's own handling began (or after it ended)
        signum = e.signum if isinstance(e, stopping.Stopped) else signal.SIGINT
        if torchrun.is_main():  # under torchrun rank 0 says it for every rank
            sys.stderr.write(f"error: {stopping.said(signum)}\nhint: {stopping.KEPT}\n")
        sys.exit(128 + signum)
