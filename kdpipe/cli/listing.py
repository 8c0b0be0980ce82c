"""`kdpipe models`, `methods` and `version`: what kdpipe accepts."""

from __future__ import annotations

from rich.table import Table

from kdpipe import __version__
from kdpipe.cli.errors import errors_reported
from kdpipe.cli.shared import DebugOpt, stdout


def list_models(debug: DebugOpt = False) -> None:
    """List the torchvision names `--teacher`/`--student` accept (besides path/to/file.py:Name)."""
    with errors_reported(debug):
        from kdpipe.models import available

        for model_name in available():
            stdout.print(model_name)


def list_methods(debug: DebugOpt = False) -> None:
    """List the distillation methods with their papers and default hyperparameters."""
    with errors_reported(debug):
        from kdpipe.distill.methods import all_methods

        table = Table("method", "paper", "stages", "defaults", "taps")
        for method_name, cls in all_methods().items():
            defaults = ", ".join(f"{k}={v:g}" for k, v in cls.defaults.items()) or "-"
            table.add_row(
                method_name,
                cls.paper,
                cls.stage_summary(),
                defaults,
                cls.reads(),
            )
        stdout.print(table)


def version() -> None:
    """Print kdpipe's version."""
    stdout.print(__version__)
