"""What every command shares: the typer app, the console tables go to, option parsing
helpers and the options several commands declare."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

from kdpipe.cli.options import opt

app = typer.Typer(
    help="Distill a big image model into a small one, export it, profile both, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Logs (CI, files) get wide tables instead of rich's 80-column default.
# Plain text: paths, model and data names, report fields are printed as given (`--out
# runs/a[b]` was printed as runs/a, a name with `[/x]` was an internal MarkupError); colour
# comes from rich Text styles, never from markup inside a string.
stdout = Console(
    highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
)


Opt = typer.Option

# Options shared by several commands, declared once.
PrecisionOpt = Annotated[str | None, opt("precision")]
BackendOpt = Annotated[str | None, opt("backend")]
CalibrationOpt = Annotated[str | None, opt("calibration")]
CalibrationSamplesOpt = Annotated[int | None, opt("calibration_samples")]
MaxDropOpt = Annotated[float | None, opt("max_accuracy_drop")]
BatchRangeOpt = Annotated[str | None, opt("batch_range")]
BatchSizesOpt = Annotated[str | None, opt("batch_sizes")]
ShipBatchOpt = Annotated[int | None, opt("ship_batch")]
ThreadsOpt = Annotated[int | None, opt("threads")]
MinItersOpt = Annotated[int | None, opt("min_iters")]
MinSecondsOpt = Annotated[float | None, opt("min_seconds")]
MemoryOpt = Annotated[bool | None, opt("memory")]
QuietOpt = Annotated[bool, Opt("--quiet", "-q", help="No progress output.")]
DebugOpt = Annotated[bool, Opt(help="Show tracebacks.")]
