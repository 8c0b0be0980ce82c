"""The `kdpipe` command: a thin typer layer over kdpipe.api.

Every failure the user can fix prints `error: ...` and `hint: ...` on stderr and exits 2
(1 for a broken budget); `--debug` shows the traceback instead.

One module per group of commands: pipeline.py (`run`), ship.py (`export`, `predict`),
measure.py (`profile`, `report`, `gate`, `compare`), listing.py (`models`, `methods`,
`version`); shared.py holds the app and the options several commands declare, errors.py how a
failure becomes one line and an exit code.
"""

from __future__ import annotations

import io
import sys

import typer

from kdpipe.cli import listing, measure, pipeline, ship
from kdpipe.cli.errors import errors_reported, reader_gone
from kdpipe.cli.shared import app, stdout
from kdpipe.core import ui

__all__ = ["app", "errors_reported", "main", "stdout"]

# Registered here, in the order `kdpipe --help` lists them: the whole pipeline, its stages, then
# what kdpipe accepts.
for _name, _command in (
    ("run", pipeline.run),
    ("export", ship.export),
    ("predict", ship.predict),
    ("profile", measure.profile),
    ("report", measure.report),
    ("gate", measure.gate),
    ("compare", measure.compare),
    ("models", listing.list_models),
    ("methods", listing.list_methods),
    ("version", listing.version),
):
    app.command(_name)(_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors become one line and exit code 2, like every other bad input."""
    # File names that are not UTF-8 (Latin-1 from an old archive) are printed as the bytes
    # they are on disk, which the next tool in a pipe can open; a strict stdout (most UTF-8
    # locales) made `kdpipe predict` fail on them. stderr already escapes them.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        code = app(args=argv, standalone_mode=False)
        sys.stdout.flush()  # what is still buffered for a pipe, while a closed one can be told
    except typer.Exit as e:
        code = e.exit_code
    except BrokenPipeError:
        code = reader_gone()
    except typer.Abort:
        ui.error("aborted")
        code = 130
    except Exception as e:
        # Typer's (click's) usage errors: a bad option, a missing value, a wrong type.
        format_message = getattr(e, "format_message", None)
        if not callable(format_message):
            raise
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "kdpipe"
        if format_message():  # empty when the help was shown for a bare command
            ui.error(format_message(), f"see `{cmd} --help`")
        code = getattr(e, "exit_code", 2)
    sys.exit(code if isinstance(code, int) else 0)
