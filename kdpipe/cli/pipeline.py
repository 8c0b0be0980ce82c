"""`kdpipe run`: the whole pipeline (teacher, distill, export, profile, report), here or on
N processes through torch's elastic launcher."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from kdpipe.cli.errors import errors_reported
from kdpipe.cli.options import overrides_of
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
    Opt,
    PrecisionOpt,
    QuietOpt,
    ThreadsOpt,
    stdout,
)
from kdpipe.core import torchrun, ui
from kdpipe.parallel import launch, stopping

if TYPE_CHECKING:
    from kdpipe.core.config import RunConfig

MODELS, DISTILL, TRAIN, DATA = "Models", "Distillation", "Training", "Data"
RUN, PROCS = "Run directory", "Processes"


def run(
    teacher: Annotated[
        str | None,
        Opt(
            help="Teacher architecture: any torchvision classifier, or your own "
            "path/to/file.py:Name (an nn.Module class or a function returning one).",
            rich_help_panel=MODELS,
        ),
    ] = None,
    student: Annotated[
        str | None, Opt(help="Student architecture (as --teacher).", rich_help_panel=MODELS)
    ] = None,
    data: Annotated[
        str | None,
        Opt(
            help="digits | imagefolder:PATH | imagenet:ROOT | cifar10:ROOT | cifar100:ROOT | mnist:ROOT | fashion-mnist:ROOT",
            rich_help_panel=DATA,
        ),
    ] = None,
    teacher_weights: Annotated[
        Path | None,
        Opt(
            help="Teacher state_dict file, or torchvision[:TAG] for torchvision's ImageNet "
            "weights from its local cache (fine-tuned, with a fresh classifier, on data of "
            "other classes). Without it the teacher is trained (and cached).",
            rich_help_panel=MODELS,
        ),
    ] = None,
    fine_tune_teacher: Annotated[
        bool | None,
        Opt(
            "--fine-tune-teacher",
            help="Train the teacher from --teacher-weights (the teacher recipe) instead of "
            "using them as given; weights for other classes get a fresh classifier.",
            rich_help_panel=MODELS,
        ),
    ] = None,
    fine_tune_lr: Annotated[
        float | None,
        Opt(
            help="Learning rate of a teacher trained from weights (default 1e-3).",
            rich_help_panel=MODELS,
        ),
    ] = None,
    student_weights: Annotated[
        Path | None,
        Opt(
            help="Student state_dict file to start from, or torchvision[:TAG] (as "
            "--teacher-weights; weights for other classes start all but the classifier).",
            rich_help_panel=MODELS,
        ),
    ] = None,
    method: Annotated[
        str | None, Opt(help="Distillation method (see `kdpipe methods`).", rich_help_panel=DISTILL)
    ] = None,
    set_: Annotated[
        list[str] | None,
        Opt(
            "--set",
            help="Method hyperparameter NAME=NUMBER, or any config key: dotted.key=VALUE "
            "(repeatable; e.g. --set T=4 --set distill.train.weight_decay=0.01).",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    terms: Annotated[
        str | None,
        Opt(
            help="Compose methods: METHOD=WEIGHT,... e.g. kd=0.9,ce=0.1,at=1000.",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    teacher_layers: Annotated[
        str | None,
        Opt(
            help="Teacher layers to tap, e.g. layer2,layer3 (default: stages).",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    student_layers: Annotated[
        str | None,
        Opt(help="Student layers to tap, as many as --teacher-layers.", rich_help_panel=DISTILL),
    ] = None,
    assistant: Annotated[
        list[str] | None,
        Opt(
            help="TAKD teacher assistant architecture (repeatable, in order).",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    peers: Annotated[
        str | None,
        Opt(
            help="DML peers besides the student, e.g. resnet18,mobilenet_v3_small.",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    transfer: Annotated[
        str | None,
        Opt(
            help="Teacher-labelled transfer set: mix | imagefolder:PATH (unlabeled images).",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    label_fraction: Annotated[
        float | None,
        Opt(
            help="Fraction of training labels the student sees (default 1).",
            rich_help_panel=DISTILL,
        ),
    ] = None,
    epochs: Annotated[int | None, Opt(help="Distillation epochs.", rich_help_panel=TRAIN)] = None,
    teacher_epochs: Annotated[
        int | None, Opt(help="Epochs when training the teacher.", rich_help_panel=TRAIN)
    ] = None,
    teacher_lr: Annotated[
        float | None,
        Opt(
            help="Peak learning rate when training the teacher (default 3e-3).",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    batch_size: Annotated[
        int | None, Opt(help="Training batch size (teacher and student).", rich_help_panel=TRAIN)
    ] = None,
    lr: Annotated[
        float | None, Opt(help="Peak learning rate of the student.", rich_help_panel=TRAIN)
    ] = None,
    image_size: Annotated[
        int | None, Opt(help="Input height/width (digits default 32).", rich_help_panel=DATA)
    ] = None,
    seed: Annotated[
        int | None, Opt(help="Seed for splits, initialization and order.", rich_help_panel=TRAIN)
    ] = None,
    precision: PrecisionOpt = None,
    backend: BackendOpt = None,
    calibration: CalibrationOpt = None,
    calibration_samples: CalibrationSamplesOpt = None,
    max_accuracy_drop: MaxDropOpt = None,
    batch_range: BatchRangeOpt = None,
    batch_sizes: BatchSizesOpt = None,
    threads: ThreadsOpt = None,
    min_iters: MinItersOpt = None,
    min_seconds: MinSecondsOpt = None,
    memory: MemoryOpt = None,
    out: Annotated[
        Path | None, Opt(help="Run directory (default runs/<name>).", rich_help_panel=RUN)
    ] = None,
    name: Annotated[
        str | None, Opt(help="Run name (default TEACHER-to-STUDENT-DATA).", rich_help_panel=RUN)
    ] = None,
    config: Annotated[
        Path | None, Opt(help="YAML or TOML config file; options override it.", rich_help_panel=RUN)
    ] = None,
    force: Annotated[
        list[str] | None,
        Opt(
            help="Redo a stage and those after it: teacher, distill, export, profile, all.",
            rich_help_panel=RUN,
        ),
    ] = None,
    until: Annotated[
        str,
        Opt(
            help="Stop after this stage: teacher, distill, export, profile, report.",
            rich_help_panel=RUN,
        ),
    ] = "report",
    device: Annotated[
        str | None, Opt(help="Training device: auto | cpu | cuda.", rich_help_panel=TRAIN)
    ] = None,
    amp: Annotated[
        bool | None,
        Opt(
            "--amp/--no-amp", help="CUDA: mixed precision (bf16, else fp16).", rich_help_panel=TRAIN
        ),
    ] = None,
    compile_: Annotated[
        bool | None,
        Opt("--compile", help="CUDA: torch.compile the student.", rich_help_panel=TRAIN),
    ] = None,
    teacher_precision: Annotated[
        str | None,
        Opt(
            help="Teacher inference: auto (half on CUDA, bf16 on CPUs that have it) | fp32 | bf16 | fp16.",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        Opt(help="Also checkpoint every N steps (always at epoch ends).", rich_help_panel=TRAIN),
    ] = None,
    detect_anomaly: Annotated[
        bool | None,
        Opt(
            "--detect-anomaly",
            help="Autograd anomaly mode (slow; finds NaN sources).",
            rich_help_panel=TRAIN,
        ),
    ] = None,
    augment: Annotated[
        str | None,
        Opt(
            help="Random training augmentation: none | crop | flip | crop-flip | resized-crop "
            "| resized-crop-flip (a shifted crop in a padded border, CIFAR's; a crop of random "
            "area and aspect resized back, ImageNet's; a horizontal flip). The teacher then "
            "runs every batch.",
            rich_help_panel=DATA,
        ),
    ] = None,
    crop_scale: Annotated[
        float | None,
        Opt(
            help="resized-crop's smallest crop, a fraction of the image area (default 0.08).",
            rich_help_panel=DATA,
        ),
    ] = None,
    center_crop: Annotated[
        float | None,
        Opt(
            help="Image files: resize the shorter side to image-size / F and cut the central "
            "square, as ImageNet is evaluated (0.875: 256 -> 224). Default: the whole image "
            "resized to a square.",
            rich_help_panel=DATA,
        ),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        Opt(
            "--sync-bn",
            help="Under --nproc/torchrun: BatchNorm over the global batch, as one process.",
            rich_help_panel=PROCS,
        ),
    ] = None,
    strict_data: Annotated[
        bool | None,
        Opt(
            "--strict-data",
            help="Fail on an undecodable image instead of skipping it.",
            rich_help_panel=DATA,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        Opt(
            min=0,
            help="DataLoader worker processes per training process (default: none on the "
            "CPU; on a GPU, for image files, the cores less one, at most 8).",
            rich_help_panel=DATA,
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        Opt(
            min=1,
            help="Train on N processes here (starts torchrun's elastic launcher).",
            rich_help_panel=PROCS,
        ),
    ] = None,
    max_restarts: Annotated[
        int,
        Opt(
            min=0,
            help="With --nproc: after a process fails, start them all again up to N times; "
            "each restart resumes from the last checkpoint.",
            rich_help_panel=PROCS,
        ),
    ] = 0,
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
