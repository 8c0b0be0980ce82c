"""`kdpipe run`: the whole pipeline (teacher, distill, export, profile, report), here or on
N processes through torch's elastic launcher."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from kdpipe.cli.errors import errors_reported
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
    csv_list,
    export_overrides,
    number_params,
    profile_overrides,
    stdout,
)
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError
from kdpipe.parallel import stopping


def run(
    teacher: Annotated[
        str | None,
        Opt(
            help="Teacher architecture: any torchvision classifier, or your own "
            "path/to/file.py:Name (an nn.Module class or a function returning one)."
        ),
    ] = None,
    student: Annotated[str | None, Opt(help="Student architecture (as --teacher).")] = None,
    data: Annotated[
        str | None,
        Opt(
            help="digits | imagefolder:PATH | imagenet:ROOT | cifar10:ROOT | cifar100:ROOT | mnist:ROOT | fashion-mnist:ROOT"
        ),
    ] = None,
    teacher_weights: Annotated[
        Path | None,
        Opt(
            help="Teacher state_dict file, or torchvision[:TAG] for torchvision's ImageNet "
            "weights from its local cache (fine-tuned, with a fresh classifier, on data of "
            "other classes). Without it the teacher is trained (and cached)."
        ),
    ] = None,
    fine_tune_teacher: Annotated[
        bool | None,
        Opt(
            "--fine-tune-teacher",
            help="Train the teacher from --teacher-weights (the teacher recipe) instead of "
            "using them as given; weights for other classes get a fresh classifier.",
        ),
    ] = None,
    fine_tune_lr: Annotated[
        float | None,
        Opt(help="Learning rate of a teacher trained from weights (default 1e-3)."),
    ] = None,
    student_weights: Annotated[
        Path | None,
        Opt(
            help="Student state_dict file to start from, or torchvision[:TAG] (as "
            "--teacher-weights; weights for other classes start all but the classifier)."
        ),
    ] = None,
    method: Annotated[str | None, Opt(help="Distillation method (see `kdpipe methods`).")] = None,
    set_: Annotated[
        list[str] | None, Opt("--set", help="Method hyperparameter NAME=NUMBER (repeatable).")
    ] = None,
    terms: Annotated[
        str | None,
        Opt(help="Compose methods: METHOD=WEIGHT,... e.g. kd=0.9,ce=0.1,at=1000."),
    ] = None,
    teacher_layers: Annotated[
        str | None, Opt(help="Teacher layers to tap, e.g. layer2,layer3 (default: stages).")
    ] = None,
    student_layers: Annotated[
        str | None, Opt(help="Student layers to tap, as many as --teacher-layers.")
    ] = None,
    assistant: Annotated[
        list[str] | None, Opt(help="TAKD teacher assistant architecture (repeatable, in order).")
    ] = None,
    peers: Annotated[
        str | None, Opt(help="DML peers besides the student, e.g. resnet18,mobilenet_v3_small.")
    ] = None,
    transfer: Annotated[
        str | None,
        Opt(help="Teacher-labelled transfer set: mix | imagefolder:PATH (unlabeled images)."),
    ] = None,
    label_fraction: Annotated[
        float | None, Opt(help="Fraction of training labels the student sees (default 1).")
    ] = None,
    epochs: Annotated[int | None, Opt(help="Distillation epochs.")] = None,
    teacher_epochs: Annotated[int | None, Opt(help="Epochs when training the teacher.")] = None,
    teacher_lr: Annotated[
        float | None, Opt(help="Peak learning rate when training the teacher (default 3e-3).")
    ] = None,
    batch_size: Annotated[
        int | None, Opt(help="Training batch size (teacher and student).")
    ] = None,
    lr: Annotated[float | None, Opt(help="Peak learning rate of the student.")] = None,
    image_size: Annotated[int | None, Opt(help="Input height/width (digits default 32).")] = None,
    seed: Annotated[int | None, Opt(help="Seed for splits, initialization and order.")] = None,
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
    out: Annotated[Path | None, Opt(help="Run directory (default runs/<name>).")] = None,
    name: Annotated[str | None, Opt(help="Run name (default TEACHER-to-STUDENT-DATA).")] = None,
    config: Annotated[
        Path | None, Opt(help="YAML or TOML config file; options override it.")
    ] = None,
    force: Annotated[
        list[str] | None,
        Opt(help="Redo a stage and those after it: teacher, distill, export, profile, all."),
    ] = None,
    until: Annotated[
        str, Opt(help="Stop after this stage: teacher, distill, export, profile, report.")
    ] = "report",
    device: Annotated[str | None, Opt(help="Training device: auto | cpu | cuda.")] = None,
    amp: Annotated[
        bool | None, Opt("--amp/--no-amp", help="CUDA: mixed precision (bf16, else fp16).")
    ] = None,
    compile_: Annotated[
        bool | None, Opt("--compile", help="CUDA: torch.compile the student.")
    ] = None,
    teacher_precision: Annotated[
        str | None,
        Opt(
            help="Teacher inference: auto (half on CUDA, bf16 on CPUs that have it) | fp32 | bf16 | fp16."
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None, Opt(help="Also checkpoint every N steps (always at epoch ends).")
    ] = None,
    detect_anomaly: Annotated[
        bool | None,
        Opt("--detect-anomaly", help="Autograd anomaly mode (slow; finds NaN sources)."),
    ] = None,
    augment: Annotated[
        str | None,
        Opt(
            help="Random training augmentation: none | crop | flip | crop-flip | resized-crop "
            "| resized-crop-flip (a shifted crop in a padded border, CIFAR's; a crop of random "
            "area and aspect resized back, ImageNet's; a horizontal flip). The teacher then "
            "runs every batch."
        ),
    ] = None,
    crop_scale: Annotated[
        float | None,
        Opt(help="resized-crop's smallest crop, a fraction of the image area (default 0.08)."),
    ] = None,
    center_crop: Annotated[
        float | None,
        Opt(
            help="Image files: resize the shorter side to image-size / F and cut the central "
            "square, as ImageNet is evaluated (0.875: 256 -> 224). Default: the whole image "
            "resized to a square."
        ),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        Opt(
            "--sync-bn",
            help="Under --nproc/torchrun: BatchNorm over the global batch, as one process.",
        ),
    ] = None,
    strict_data: Annotated[
        bool | None,
        Opt("--strict-data", help="Fail on an undecodable image instead of skipping it."),
    ] = None,
    workers: Annotated[
        int | None,
        Opt(
            min=0,
            help="DataLoader worker processes per training process (default: none on the "
            "CPU; on a GPU, for image files, the cores less one, at most 8).",
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        Opt(min=1, help="Train on N processes here (starts torchrun's elastic launcher)."),
    ] = None,
    max_restarts: Annotated[
        int,
        Opt(
            min=0,
            help="With --nproc: after a process fails, start them all again up to N times; "
            "each restart resumes from the last checkpoint.",
        ),
    ] = 0,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train or load the teacher, distill the student, export, profile both and report."""
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe.core.config import build_config, load_config_file
        from kdpipe.core.runs import check_until, forced_stages, refuse_foreign_dir
        from kdpipe.parallel.runlock import RunLock

        overrides: dict[str, Any] = {
            "teacher.arch": teacher,
            "student.arch": student,
            "data.spec": data,
            "teacher.weights": teacher_weights,
            "teacher.fine_tune": fine_tune_teacher,
            "teacher.fine_tune_lr": fine_tune_lr,
            "student.weights": student_weights,
            "distill.method": method,
            "distill.params": number_params(set_),
            "distill.terms": number_params(csv_list(terms), "--terms", "kd=0.9,ce=0.1,at=1000"),
            "distill.teacher_layers": csv_list(teacher_layers),
            "distill.student_layers": csv_list(student_layers),
            "distill.assistants": assistant,
            "distill.peers": csv_list(peers),
            "distill.transfer": transfer,
            "distill.label_fraction": label_fraction,
            "distill.train.epochs": epochs,
            "teacher.train.epochs": teacher_epochs,
            "teacher.train.lr": teacher_lr,
            "distill.train.batch_size": batch_size,
            "teacher.train.batch_size": batch_size,
            "distill.train.lr": lr,
            "data.image_size": image_size,
            "seed": seed,
            **export_overrides(
                precision, backend, calibration, calibration_samples, max_accuracy_drop, batch_range
            ),
            **profile_overrides(batch_sizes, threads, None, min_iters, min_seconds, memory),
            "runtime.device": device,
            "runtime.amp": amp,
            "runtime.compile": compile_,
            "runtime.teacher_precision": teacher_precision,
            "runtime.checkpoint_every": checkpoint_every,
            "runtime.detect_anomaly": detect_anomaly,
            "runtime.sync_bn": sync_bn,
            "data.strict": strict_data,
            "data.workers": workers,
            "data.augment": augment,
            "data.crop_scale": crop_scale,
            "data.center_crop": center_crop,
            "out": out,
            "name": name,
        }
        cfg = build_config(load_config_file(config) if config else {}, overrides)
        # What needs no torch is checked before importing it (~5 s): a typo fails at once.
        check_until(until)
        forced = bool(forced_stages(force or ()))
        if "WORLD_SIZE" in os.environ:
            from kdpipe.parallel.launch import die_with_launcher

            die_with_launcher()
        else:  # under torchrun rank 0 checks, while the others wait
            refuse_foreign_dir(cfg.out_dir(), forced)
            if cfg.out_dir().is_dir():  # a directory another run holds: refused at once too
                probe = RunLock(cfg.out_dir())
                probe.acquire(warn=False)
                probe.release()
        if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
            # Until torch's launcher takes signals its own way (it passes them on to the
            # processes it starts), a signal stops this process with its line.
            with stopping.at_once():
                from kdpipe.api import validate  # torch: seconds
                from kdpipe.parallel.launch import check_devices, relaunch

                validate(cfg, nproc)  # --until, --force and --out were checked above
                check_devices(nproc, cfg.runtime.device)
                code = relaunch(nproc, sys.argv[1:], max_restarts)
            raise typer.Exit(code)
        if max_restarts and "WORLD_SIZE" not in os.environ:
            raise ConfigError(
                "--max-restarts restarts the processes --nproc starts",
                "add --nproc N (N >= 2), or give torchrun its own --max-restarts",
            )
        # From before importing torch (seconds): a signal then still stops with its line,
        # rather than ending a torchrun process silently.
        with stopping.handled():
            from kdpipe.api import run as run_pipeline

            report = run_pipeline(cfg, force or (), until)
        from kdpipe.report.terminal import print_summary

        if "WORLD_SIZE" in os.environ and os.environ.get("RANK", "0") != "0":
            return  # rank 0 reports
        where = cfg.out_dir()
        if until != "report":
            stdout.print(f"stopped after {until}: {where / until}")
            return
        print_summary(report, stdout)
        stdout.print(
            f"report: {where / 'report.json'}  {where / 'report.md'}  {where / 'report.html'}"
        )
