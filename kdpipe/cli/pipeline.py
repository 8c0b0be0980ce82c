"""`kdpipe run`: the whole pipeline (teacher, distill, export, profile, report), here or on
N processes through torch's elastic launcher."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kdpipe.cli.errors import errors_reported
from kdpipe.cli.options import opt, overrides_of
from kdpipe.cli.shared import (
    BackendOpt,
    BatchRangeOpt,
    BatchSizesOpt,
    CalibrationOpt,
    CalibrationSamplesOpt,
    DebugOpt,
    MaxDropOpt,
    MemoryOpt,
    MinItersOpt,
    MinSecondsOpt,
    PrecisionOpt,
    QuietOpt,
    ShipBatchOpt,
    ThreadsOpt,
    stdout,
)
from kdpipe.core import torchrun, ui
from kdpipe.parallel import launch, stopping

if TYPE_CHECKING:
    from kdpipe.core.config import RunConfig


def run(
    teacher: Annotated[str | None, opt("teacher")] = None,
    student: Annotated[str | None, opt("student")] = None,
    data: Annotated[str | None, opt("data")] = None,
    teacher_weights: Annotated[Path | None, opt("teacher_weights")] = None,
    fine_tune_teacher: Annotated[bool | None, opt("fine_tune_teacher")] = None,
    fine_tune_lr: Annotated[float | None, opt("fine_tune_lr")] = None,
    student_weights: Annotated[Path | None, opt("student_weights")] = None,
    method: Annotated[str | None, opt("method")] = None,
    set_: Annotated[list[str] | None, opt("set_")] = None,
    terms: Annotated[str | None, opt("terms")] = None,
    teacher_layers: Annotated[str | None, opt("teacher_layers")] = None,
    student_layers: Annotated[str | None, opt("student_layers")] = None,
    assistant: Annotated[list[str] | None, opt("assistant")] = None,
    peers: Annotated[str | None, opt("peers")] = None,
    transfer: Annotated[str | None, opt("transfer")] = None,
    label_fraction: Annotated[float | None, opt("label_fraction")] = None,
    epochs: Annotated[int | None, opt("epochs")] = None,
    teacher_epochs: Annotated[int | None, opt("teacher_epochs")] = None,
    teacher_lr: Annotated[float | None, opt("teacher_lr")] = None,
    batch_size: Annotated[int | None, opt("batch_size")] = None,
    lr: Annotated[float | None, opt("lr")] = None,
    image_size: Annotated[int | None, opt("image_size")] = None,
    seed: Annotated[int | None, opt("seed")] = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    calibration: CalibrationOpt = None,
    calibration_samples: CalibrationSamplesOpt = None,
    max_accuracy_drop: MaxDropOpt = None,
    batch_range: BatchRangeOpt = None,
    batch_sizes: BatchSizesOpt = None,
    ship_batch: ShipBatchOpt = None,
    threads: ThreadsOpt = None,
    min_iters: MinItersOpt = None,
    min_seconds: MinSecondsOpt = None,
    memory: MemoryOpt = None,
    out: Annotated[Path | None, opt("out")] = None,
    name: Annotated[str | None, opt("name")] = None,
    config: Annotated[Path | None, opt("config")] = None,
    force: Annotated[list[str] | None, opt("force")] = None,
    until: Annotated[str, opt("until")] = "report",
    device: Annotated[str | None, opt("device")] = None,
    amp: Annotated[bool | None, opt("amp")] = None,
    compile_: Annotated[bool | None, opt("compile_")] = None,
    teacher_precision: Annotated[str | None, opt("teacher_precision")] = None,
    checkpoint_every: Annotated[int | None, opt("checkpoint_every")] = None,
    detect_anomaly: Annotated[bool | None, opt("detect_anomaly")] = None,
    augment: Annotated[str | None, opt("augment")] = None,
    crop_scale: Annotated[float | None, opt("crop_scale")] = None,
    center_crop: Annotated[float | None, opt("center_crop")] = None,
    sync_bn: Annotated[bool | None, opt("sync_bn")] = None,
    strict_data: Annotated[bool | None, opt("strict_data")] = None,
    workers: Annotated[int | None, opt("workers")] = None,
    nproc: Annotated[int | None, opt("nproc")] = None,
    max_restarts: Annotated[int, opt("max_restarts")] = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train or load the teacher, distill the student, export, profile both and report."""
    options = dict(locals())  # every option by its parameter name: overrides_of maps them
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe.core.config import build_config, load_config_file

        cfg = build_config(load_config_file(config) if config else {}, overrides_of(options))
        # What needs no torch is checked before importing it (~5 s): a typo fails at once.
        launch.check_before_torch(cfg.out_dir(), force or (), until)
        if nproc is not None and nproc > 1 and not torchrun.active():
            raise typer.Exit(_launch(cfg, nproc, max_restarts))
        launch.refuse_restarts_alone(max_restarts)
        # From before importing torch (seconds): a signal then still stops with its line,
        # rather than ending a torchrun process silently.
        with stopping.handled():
            from kdpipe import api

            report = api.run(cfg, force or (), until)
        if torchrun.is_main():  # under torchrun rank 0 reports
            _show(report, cfg.out_dir(), until)


def _launch(cfg: RunConfig, nproc: int, max_restarts: int) -> int:
    """Start `nproc` processes through torch's elastic launcher; its exit code."""
    from kdpipe import api  # torch: seconds

    api.validate(cfg, nproc)  # --until, --force and --out were checked above
    launch.check_devices(nproc, cfg.runtime.device)
    return launch.relaunch(nproc, sys.argv[1:], max_restarts)


def _show(report: dict, where: Path, until: str) -> None:
    from kdpipe.report.terminal import print_summary

    if until != "report":
        stdout.print(f"stopped after {until}: {where / until}")
        return
    print_summary(report, stdout)
    stdout.print(f"report: {where / 'report.json'}  {where / 'report.md'}  {where / 'report.html'}")
