"""`kdpipe export` (ONNX FP32/FP16/INT8, TensorRT, the edge bundle) and `kdpipe predict`
(classify images with a bundle)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdpipe.cli.errors import errors_reported
from kdpipe.cli.options import overrides_of
from kdpipe.cli.shared import (
    BackendOpt,
    BatchRangeOpt,
    CalibrationOpt,
    CalibrationSamplesOpt,
    DebugOpt,
    MaxDropOpt,
    Opt,
    PrecisionOpt,
    QuietOpt,
    stdout,
)
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError

DATA_OPTIONS = ("data", "image_size", "center_crop")  # for --weights alone


def export(
    run_dir: Annotated[
        Path | None, typer.Argument(help="A kdpipe run directory to export from.")
    ] = None,
    arch: Annotated[
        str | None, Opt(help="Architecture of --weights (instead of a run directory).")
    ] = None,
    weights: Annotated[Path | None, Opt(help="state_dict file of the model to export.")] = None,
    data: Annotated[
        str | None, Opt(help="Dataset for calibration and parity (with --weights).")
    ] = None,
    image_size: Annotated[int | None, Opt(help="Input height/width (with --weights).")] = None,
    center_crop: Annotated[
        float | None,
        Opt(help="Image files: shorter side to image-size / F, central square (with --weights)."),
    ] = None,
    out: Annotated[
        Path | None, Opt(help="Where to write (with --weights; default ./export).")
    ] = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    calibration: CalibrationOpt = None,
    calibration_samples: CalibrationSamplesOpt = None,
    max_accuracy_drop: MaxDropOpt = None,
    batch_range: BatchRangeOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export a student to ONNX FP32/FP16/INT8 (+TensorRT) with parity checks and a bundle."""
    options = dict(locals())
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe.api import measure

        given = [f"--{p.replace('_', '-')}" for p in DATA_OPTIONS if options[p] is not None]
        if run_dir is not None and weights is None and given:
            raise ConfigError(
                f"{', '.join(given)} {'do' if len(given) > 1 else 'does'} not apply to a "
                "run directory (its data fixes it)",
                "drop it, or export --arch/--weights with the data of your choice",
            )
        results, where = measure.export_again(
            run_dir,
            (arch, weights),
            overrides_of(options, ("export",)),
            overrides_of(options, ("data",)),
            out,
        )
        for name, r in results.items():
            p = r["parity"]
            stdout.print(
                f"{name:5} {r['file']:22} {r['size_bytes'] / 1e6:7.2f} MB  "
                f"max|dlogit| {p['max_abs_diff']:.2e}  agreement {100 * p['top1_agreement']:.2f}%  "
                f"top-1 {100 * p['accuracy']:.2f}%"
            )
        stdout.print(f"bundle: {where / 'bundle.json'}")


def predict(
    bundle: Annotated[Path, typer.Argument(help="An export folder holding bundle.json.")],
    images: Annotated[
        list[Path], typer.Argument(help="Image files to classify, or folders of them.")
    ],
    precision: Annotated[
        str | None,
        Opt(help="Which model of the bundle: fp32, fp16 or int8 (default: the one it ships)."),
    ] = None,
    runtime: Annotated[
        str | None,
        Opt(help="onnxruntime or openvino (default: the one the bundle ships for)."),
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Classify images with a bundle, using only onnxruntime or OpenVINO, numpy and Pillow."""
    with errors_reported(debug):
        import json

        from kdpipe.predict import predict as run_predict

        for p in run_predict(bundle, images, precision, runtime=runtime):
            if as_json:
                record = {
                    "image": p.path,
                    "label": p.label,
                    "index": p.index,
                    "probability": p.probability,
                }
                print(json.dumps(record))
            else:
                print(f"{p.path}\t{p.label}\t{p.probability:.4f}")
