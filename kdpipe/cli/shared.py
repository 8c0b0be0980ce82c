"""What every command shares: the typer app, the console tables go to, option parsing
helpers and the options several commands declare."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from kdpipe.core.errors import ConfigError

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


def csv_list(value: str | None, cast: type = str, option: str = "") -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} takes a comma-separated list, got '{value}'", f"e.g. {option} 1,32"
        ) from None


def number_params(
    pairs: list[str] | None, option: str = "--set", example: str = "T=4 --set alpha=0.9"
) -> dict[str, float] | None:
    if not pairs:
        return None
    out: dict[str, float] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(
                f"{option} takes NAME=NUMBER, got '{pair}'", f"e.g. {option} {example}"
            ) from None
    return out


Opt = typer.Option

# Options shared by several commands, declared once.
PrecisionOpt = Annotated[
    str | None, Opt(help="Export precisions, comma-separated: fp32,fp16,int8.")
]
BackendOpt = Annotated[
    str | None, Opt(help="Export backends: onnx,tensorrt (TensorRT needs a GPU).")
]
CalibrationOpt = Annotated[str | None, Opt(help="INT8 calibration: minmax | entropy | percentile.")]
CalibrationSamplesOpt = Annotated[
    int | None, Opt(help="Training images used for INT8 calibration.")
]
MaxDropOpt = Annotated[
    float | None, Opt(help="Largest INT8 top-1 drop vs FP32, in points (default 1).")
]
BatchRangeOpt = Annotated[str | None, Opt(help="TensorRT profile batch sizes MIN,OPT,MAX.")]
BatchSizesOpt = Annotated[
    str | None, Opt(help="Profile batch sizes, comma-separated (default 1,32).")
]
ThreadsOpt = Annotated[
    int | None, Opt(help="CPU threads for profiling (default: all cores); recorded.")
]
MinItersOpt = Annotated[int | None, Opt(help="Profile: timed calls per model, at least.")]
MinSecondsOpt = Annotated[float | None, Opt(help="Profile: timed seconds per model, at least.")]
MemoryOpt = Annotated[bool | None, Opt("--memory/--no-memory", help="Measure memory per backend.")]
QuietOpt = Annotated[bool, Opt("--quiet", "-q", help="No progress output.")]
DebugOpt = Annotated[bool, Opt(help="Show tracebacks.")]


def profile_overrides(
    batch_sizes: str | None,
    threads: int | None,
    warmup: int | None,
    min_iters: int | None,
    min_seconds: float | None,
    memory: bool | None,
) -> dict[str, Any]:
    return {
        "profile.batch_sizes": csv_list(batch_sizes, int, "--batch-sizes"),
        "profile.threads": threads,
        "profile.warmup": warmup,
        "profile.min_iters": min_iters,
        "profile.min_seconds": min_seconds,
        "profile.memory": memory,
    }


def export_overrides(
    precision: str | None,
    backend: str | None,
    calibration: str | None,
    calibration_samples: int | None,
    max_accuracy_drop: float | None,
    batch_range: str | None,
) -> dict[str, Any]:
    return {
        "export.precisions": csv_list(precision, str, "--precision"),
        "export.backends": csv_list(backend, str, "--backend"),
        "export.calibration": calibration,
        "export.calibration_samples": calibration_samples,
        "export.max_accuracy_drop": max_accuracy_drop,
        "export.batch_range": csv_list(batch_range, int, "--batch-range"),
    }
