"""What every command shares: the typer app, the console tables go to, option parsing
helpers and the options several commands declare."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

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
EXPORT, PROFILE = "Export", "Profile"
PrecisionOpt = Annotated[
    str | None,
    Opt(help="Export precisions, comma-separated: fp32,fp16,int8.", rich_help_panel=EXPORT),
]
BackendOpt = Annotated[
    str | None,
    Opt(help="Export backends: onnx,tensorrt (TensorRT needs a GPU).", rich_help_panel=EXPORT),
]
CalibrationOpt = Annotated[
    str | None,
    Opt(help="INT8 calibration: minmax | entropy | percentile.", rich_help_panel=EXPORT),
]
CalibrationSamplesOpt = Annotated[
    int | None, Opt(help="Training images used for INT8 calibration.", rich_help_panel=EXPORT)
]
MaxDropOpt = Annotated[
    float | None,
    Opt(help="Largest INT8 top-1 drop vs FP32, in points (default 1).", rich_help_panel=EXPORT),
]
BatchRangeOpt = Annotated[
    str | None, Opt(help="TensorRT profile batch sizes MIN,OPT,MAX.", rich_help_panel=EXPORT)
]
BatchSizesOpt = Annotated[
    str | None,
    Opt(help="Profile batch sizes, comma-separated (default 1,32).", rich_help_panel=PROFILE),
]
ThreadsOpt = Annotated[
    int | None,
    Opt(help="CPU threads for profiling (default: all cores); recorded.", rich_help_panel=PROFILE),
]
MinItersOpt = Annotated[
    int | None, Opt(help="Profile: timed calls per model, at least.", rich_help_panel=PROFILE)
]
MinSecondsOpt = Annotated[
    float | None, Opt(help="Profile: timed seconds per model, at least.", rich_help_panel=PROFILE)
]
MemoryOpt = Annotated[
    bool | None,
    Opt("--memory/--no-memory", help="Measure memory per backend.", rich_help_panel=PROFILE),
]
QuietOpt = Annotated[bool, Opt("--quiet", "-q", help="No progress output.")]
DebugOpt = Annotated[bool, Opt(help="Show tracebacks.")]
