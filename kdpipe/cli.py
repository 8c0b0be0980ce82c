"""The `kdpipe` command: a thin typer layer over kdpipe.api.

Every failure the user can fix prints `error: ...` and `hint: ...` on stderr and exits 2
(1 for a broken budget); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import errno
import io
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from kdpipe import __version__, stopping, ui
from kdpipe.errors import ConfigError, KdpipeError, first_line
from kdpipe.stopping import Stopped

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


def reader_gone() -> int:
    """The reader of stdout stopped (`kdpipe predict ... | head -1`): stop quietly, exit 1 —
    what rich does when its own output meets a closed pipe — not "internal error:
    BrokenPipeError". Later writes (the interpreter's last flush) go nowhere."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1


def _fail(message: str, hint: str, code: int) -> None:
    ui.error(message, hint)
    raise typer.Exit(code)


@contextmanager
def errors_reported(debug: bool) -> Iterator[None]:
    """Turn kdpipe's errors into one line plus a hint; anything else is an internal error."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KdpipeError as e:
        if debug:
            traceback.print_exc()
        if e.everywhere and os.environ.get("RANK", "0") != "0":
            raise typer.Exit(e.exit_code) from None  # rank 0 says it for every rank
        _fail(e.message, e.hint, e.exit_code)
    except Stopped as e:  # a signal (stopping.py); under torchrun rank 0 says it for all
        if os.environ.get("RANK", "0") != "0":
            raise typer.Exit(e.exit_code) from None
        _fail(e.message, e.hint, e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", "finished stages are kept; run the same command again to resume", 130)
    except BrokenPipeError:
        raise typer.Exit(reader_gone()) from None
    except Exception as e:  # noqa: BLE001 - the last line of defence: never a bare traceback
        if debug:
            traceback.print_exc()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):  # not a bug
            _fail(
                f"cannot write {e.filename or 'a file'}: {e.strerror}",
                "free space on that disk, or point --out (or $KDPIPE_CACHE) elsewhere; "
                "finished stages and the last checkpoint are kept: run the same command again "
                "to resume",
                1,
            )
        if isinstance(e, OSError) and e.filename and e.strerror:  # a path the system refused
            _fail(
                f"cannot use {e.filename}: {e.strerror}",
                "check that path: a file where a file is expected, in a folder kdpipe may use",
                2,
            )
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if out_of_memory(e):  # the most common failure on a GPU, and not a bug either
            _fail(
                f"out of memory: {first or type(e).__name__}",
                "use smaller batches or images (--batch-size is the global batch; "
                "--image-size; --batch-sizes for profiling); finished stages and the last "
                "checkpoint are kept",
                1,
            )
        gone = [s for s in PEER_GONE if s in str(e)] if "WORLD_SIZE" in os.environ else []
        if gone:  # the transport's symptom, not its paragraph of advice
            _fail(
                f"lost contact with another process of this run ({gone[0]})",
                "that process failed or was stopped (its own error says why); finished stages "
                "and the last checkpoint are kept: run the same command again to resume, or "
                "let --max-restarts N do it",
                1,
            )
        _fail(f"internal error: {type(e).__name__}: {first}", "rerun with --debug and report it", 1)


# What gloo and NCCL say when a peer process died: the error of a rank whose partner failed,
# not a bug of its own.
def out_of_memory(e: BaseException) -> bool:
    """numpy's MemoryError, torch's CUDA OutOfMemoryError, or its CPU allocator's refusal."""
    torch = sys.modules.get("torch")  # never imported just to ask
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return (
        isinstance(e, MemoryError)
        or (cuda_oom is not None and isinstance(e, cuda_oom))
        or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
    )


PEER_GONE = (
    "Connection reset by peer",  # gloo
    "Connection closed by peer",
    "Broken pipe",
    "remote process exited or there was a network error",  # NCCL
    "Connection closed by remote peer",
)


def _csv(value: str | None, cast: type = str, option: str = "") -> list | None:
    if value is None:
        return None
    try:
        return [cast(v.strip()) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"{option} takes a comma-separated list, got '{value}'", f"e.g. {option} 1,32"
        ) from None


def _params(
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


@app.command()
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
        from kdpipe.config import build_config, load_config_file
        from kdpipe.runlock import RunLock
        from kdpipe.runs import check_until, forced_stages, refuse_foreign_dir

        overrides: dict[str, Any] = {
            "teacher.arch": teacher,
            "student.arch": student,
            "data.spec": data,
            "teacher.weights": teacher_weights,
            "teacher.fine_tune": fine_tune_teacher,
            "teacher.fine_tune_lr": fine_tune_lr,
            "student.weights": student_weights,
            "distill.method": method,
            "distill.params": _params(set_),
            "distill.terms": _params(_csv(terms), "--terms", "kd=0.9,ce=0.1,at=1000"),
            "distill.teacher_layers": _csv(teacher_layers),
            "distill.student_layers": _csv(student_layers),
            "distill.assistants": assistant,
            "distill.peers": _csv(peers),
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
            **_export_overrides(
                precision, backend, calibration, calibration_samples, max_accuracy_drop, batch_range
            ),
            "profile.batch_sizes": _csv(batch_sizes, int, "--batch-sizes"),
            "profile.threads": threads,
            "profile.min_iters": min_iters,
            "profile.min_seconds": min_seconds,
            "profile.memory": memory,
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
            from kdpipe.launch import die_with_launcher

            die_with_launcher()
        else:  # under torchrun rank 0 checks, while the others wait
            refuse_foreign_dir(cfg.out_dir(), forced)
            if cfg.out_dir().is_dir():  # a directory another run holds: refused at once too
                probe = RunLock(cfg.out_dir())
                probe.acquire(warn=False)
                probe.release()
        if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
            from kdpipe.api import validate
            from kdpipe.launch import check_devices, relaunch

            validate(cfg, nproc)  # --until, --force and --out were checked above
            check_devices(nproc, cfg.runtime.device)
            # The launcher takes signals its own way (it passes them on to the processes).
            raise typer.Exit(relaunch(nproc, sys.argv[1:], max_restarts))
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


def _export_overrides(
    precision: str | None,
    backend: str | None,
    calibration: str | None,
    calibration_samples: int | None,
    max_accuracy_drop: float | None,
    batch_range: str | None,
) -> dict[str, Any]:
    return {
        "export.precisions": _csv(precision, str, "--precision"),
        "export.backends": _csv(backend, str, "--backend"),
        "export.calibration": calibration,
        "export.calibration_samples": calibration_samples,
        "export.max_accuracy_drop": max_accuracy_drop,
        "export.batch_range": _csv(batch_range, int, "--batch-range"),
    }


@app.command()
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
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe import api
        from kdpipe.config import build_config

        overrides = _export_overrides(
            precision, backend, calibration, calibration_samples, max_accuracy_drop, batch_range
        )
        if (run_dir is None) == (weights is None):
            raise ConfigError(
                "pass either a run directory or --arch with --weights",
                "e.g. kdpipe export runs/my-run",
            )
        if run_dir is not None:
            given = {"--data": data, "--image-size": image_size, "--center-crop": center_crop}
            if stray := [name for name, v in given.items() if v is not None]:
                raise ConfigError(
                    f"{', '.join(stray)} {'do' if len(stray) > 1 else 'does'} not apply to a "
                    "run directory (its data fixes it)",
                    "drop it, or export --arch/--weights with the data of your choice",
                )
            cfg = build_config(api.load_run_config(run_dir), overrides, "export")
            results = api.run(cfg, until="export")
            where = run_dir / "export"
        else:
            if not arch or weights is None:
                raise ConfigError(
                    "--weights needs --arch", "e.g. --arch resnet18 --weights student.pt"
                )
            where = out or Path("export")
            data_overrides = {
                "data.spec": data,
                "data.image_size": image_size,
                "data.center_crop": center_crop,
            }
            cfg = build_config({}, {**overrides, **data_overrides}, "export")
            results = api.export_weights(arch, weights, cfg, where)
        for name, r in results.items():
            p = r["parity"]
            stdout.print(
                f"{name:5} {r['file']:22} {r['size_bytes'] / 1e6:7.2f} MB  "
                f"max|dlogit| {p['max_abs_diff']:.2e}  agreement {100 * p['top1_agreement']:.2f}%  "
                f"top-1 {100 * p['accuracy']:.2f}%"
            )
        stdout.print(f"bundle: {where / 'bundle.json'}")


@app.command()
def predict(
    bundle: Annotated[Path, typer.Argument(help="An export folder holding bundle.json.")],
    images: Annotated[
        list[Path], typer.Argument(help="Image files to classify, or folders of them.")
    ],
    precision: Annotated[str, Opt(help="Which model of the bundle: fp32, fp16 or int8.")] = "fp32",
    as_json: Annotated[bool, Opt("--json", help="One JSON object per line.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Classify images with a bundle, using only onnxruntime, numpy and Pillow (no torch)."""
    with errors_reported(debug):
        import json

        from kdpipe.predict import predict as run_predict

        for p in run_predict(bundle, images, precision):
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


def _profile_overrides(
    batch_sizes: str | None,
    threads: int | None,
    warmup: int | None,
    min_iters: int | None,
    min_seconds: float | None,
    memory: bool | None,
) -> dict[str, Any]:
    return {
        "profile.batch_sizes": _csv(batch_sizes, int, "--batch-sizes"),
        "profile.threads": threads,
        "profile.warmup": warmup,
        "profile.min_iters": min_iters,
        "profile.min_seconds": min_seconds,
        "profile.memory": memory,
    }


@app.command()
def profile(
    targets: Annotated[
        list[str], typer.Argument(help="Run dir, bundle dir, .onnx, .plan or ARCH:WEIGHTS.pt")
    ],
    batch_sizes: BatchSizesOpt = None,
    threads: ThreadsOpt = None,
    input_size: Annotated[
        str | None,
        Opt(
            help="The input's size after the batch: C,H,W for images (default: what the "
            "files fix, else 3,224,224)."
        ),
    ] = None,
    warmup: Annotated[int | None, Opt(help="Warm-up calls, at least.")] = None,
    min_iters: MinItersOpt = None,
    min_seconds: MinSecondsOpt = None,
    memory: MemoryOpt = None,
    out: Annotated[Path | None, Opt(help="Write the results as JSON here.")] = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Time models side by side (interleaved): a run directory again, or any ONNX/TensorRT/torch files.

    A run directory alone is re-profiled with its own settings; options given here replace them and are recorded in its config.yaml, so its report always says how it was measured. Among other targets it stands for its models (RUN/teacher, RUN/student: the bundle, teacher.onnx and both weight files)."""  # noqa: E501
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe import api
        from kdpipe.config import build_config
        from kdpipe.runs import write_json

        overrides = _profile_overrides(batch_sizes, threads, warmup, min_iters, min_seconds, memory)
        run_dirs = [t for t in targets if (Path(t) / "config.yaml").is_file()]
        # A run directory alone is re-profiled into its own report; among other targets it
        # stands for its models (profile.standalone.run_dir_targets).
        if run_dirs and len(targets) == 1:
            if input_size is not None:
                raise ConfigError(
                    "--input-size does not apply to a run directory (its data fixes the size)",
                    "drop --input-size, or profile the run's ONNX file instead",
                )
            from kdpipe.report.terminal import print_summary

            cfg = build_config(api.load_run_config(Path(run_dirs[0])), overrides, "profile")
            report = api.run(cfg, force=["profile"])
            print_summary(report, stdout)
            if out is not None:  # besides the run's own report.json
                write_json(out, report)
            return
        from kdpipe.profile.standalone import profile_targets

        cfg = build_config({}, overrides, "profile")
        chw = _csv(input_size, int, "--input-size")
        if chw is not None and (not chw or any(v < 1 for v in chw)):
            raise ConfigError(
                f"--input-size takes positive sizes, got '{input_size}'",
                "e.g. --input-size 3,32,32",
            )
        results = profile_targets(targets, cfg.profile, chw)
        table = Table(
            Column("model", overflow="fold"),
            "backend",
            "precision",
            "batch",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "cv",
            "img/s",
            "peak RSS MB",
            title="kdpipe profile",
        )
        for e in results["latency"]:
            key = f"{e['model']}.{e['backend']}.{e['precision']}"
            rss = results["memory"].get(key, {}).get("peak_rss_over_baseline_bytes")
            table.add_row(
                e["model"],
                e["backend"],
                e["precision"],
                str(e["batch_size"]),
                f"{e['p50_ms']:.3f}",
                f"{e['p95_ms']:.3f}",
                f"{e['p99_ms']:.3f}",
                f"{e['cv']:.2f}",
                f"{e['throughput']:.0f}",
                f"{rss / 1e6:.1f}" if rss is not None else "-",
            )
        stdout.print(table)
        if out:
            write_json(out, results)
            stdout.print(f"results: {out}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A kdpipe run directory.")],
    debug: DebugOpt = False,
) -> None:
    """Rebuild report.md and report.html from the run's report.json."""
    with errors_reported(debug):
        from kdpipe.gate import load_report
        from kdpipe.report.write import write_reports

        path = run_dir / "report.json"
        try:
            write_reports(run_dir, load_report(path), with_json=False)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            # load_report checked the metrics map; the rest of a hand-edited or partial report
            # is found missing by the renderers themselves
            raise ConfigError(
                f"report {path} is incomplete ({type(e).__name__}: {first_line(e)})",
                "re-run kdpipe run (it writes a whole report.json), then kdpipe report",
            ) from None
        stdout.print(f"report: {run_dir / 'report.md'}  {run_dir / 'report.html'}")


@app.command()
def gate(
    report: Annotated[Path, typer.Argument(help="report.json of a kdpipe run.")],
    budgets: Annotated[Path, Opt(help="Budgets file (YAML or TOML).")],
    junit: Annotated[
        Path | None, Opt(help="Write JUnit XML here (one test case per budget).")
    ] = None,
    strict: Annotated[bool, Opt(help="Judge point estimates, not confidence intervals.")] = False,
    measure: Annotated[
        bool, Opt(help="Re-profile the run's artifacts on this machine first.")
    ] = False,
    confirm: Annotated[
        int,
        Opt(
            min=0,
            max=10,
            help="With --measure: a timing budget that is not a clear pass is measured again, "
            "up to N more times, and breaks when most measurements failed (0: judge one).",
        ),
    ] = 2,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fail (exit 1) when a latency/accuracy/size budget is broken; exit 2 on bad input."""
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe import gate as g
        from kdpipe.errors import BudgetError
        from kdpipe.runs import load_samples

        limits = g.load_budgets(budgets)  # bad budgets fail before minutes of measuring
        given = g.given_metrics(report) if measure else {}
        latest: dict[str, dict] = {}  # the last measurement's report, for the drift notes

        def measured() -> tuple[dict, dict[str, list[float]]]:
            if measure:
                from kdpipe import api
                from kdpipe.config import build_config

                api.run(build_config(api.load_run_config(report.parent), {}), force=["profile"])
            latest["report"] = g.load_report(report)
            return latest["report"], load_samples(report.parent)

        def retrying(unsettled: list[str], n: int) -> None:
            ui.warn(
                f"{', '.join(unsettled)}: not settled by {n} measurement{'s' * (n > 1)}; "
                f"measuring again ({n} of {confirm})"
            )

        verdicts = g.judge_confirmed(measured, limits, strict, confirm if measure else 0, retrying)
        table = Table(
            Column("metric", overflow="fold"),
            "value",
            "95% CI",
            "budget",
            "margin",
            Column("verdict", overflow="fold"),
            title="kdpipe gate",
        )
        for v in verdicts:
            ci = f"{v.low:.4g} - {v.high:.4g}" if v.low is not None else "-"
            verdict = (
                Text("pass", style="green")
                if v.passed
                else Text.assemble(("FAIL", "red"), f" {v.reason}")
            )
            table.add_row(v.metric, f"{v.value:.4g}", ci, g.budget_text(v), g.margin(v), verdict)
        stdout.print(table)
        if measure:
            for note in g.drift_notes(given, latest["report"]["metrics"], verdicts):
                stdout.print(f"note: {note}", soft_wrap=True)
        if junit:
            g.write_junit(verdicts, junit)
        g.append_github_summary(verdicts)
        broken = [v for v in verdicts if not v.passed]
        if broken:
            raise BudgetError(
                f"{len(broken)} of {len(verdicts)} budgets broken: {', '.join(v.metric for v in broken)}",
                "see the table above",
            )
        stdout.print(f"all {len(verdicts)} budgets hold")


@app.command()
def compare(
    base: Annotated[Path, typer.Argument(help="Baseline report.json (e.g. from main).")],
    new: Annotated[Path, typer.Argument(help="New report.json.")],
    fail_on: Annotated[
        str | None, Opt(help="Regression rules, e.g. latency:+10%,accuracy:-0.5")
    ] = None,
    strict: Annotated[
        bool, Opt(help="Judge latency changes on point estimates, not confidence intervals.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Every shared metric of two reports with its change; exit 1 when a --fail-on rule breaks.

    Latency rules are judged on the 95 % interval of the change where both runs kept their samples (profile/samples.json beside report.json)."""  # noqa: E501
    with errors_reported(debug):
        from kdpipe.errors import BudgetError
        from kdpipe.gate import load_report
        from kdpipe.report.compare import Side, machine_difference, parse_rules
        from kdpipe.report.compare import compare as diff
        from kdpipe.runs import load_samples

        rules = parse_rules(fail_on or "")
        sides, machines = [], []
        for path in (base, new):
            samples = load_samples(path.parent)
            if not samples and not strict and any(r.category == "latency" for r in rules):
                ui.info(
                    f"compare: {path} has no profile/samples.json beside it; its latencies "
                    "are compared as point estimates"
                )
            report = load_report(path)
            sides.append(Side.of(report, samples))
            machines.append(report.get("environment") or {})
        elsewhere = machine_difference(*machines)
        if elsewhere:
            ui.warn(elsewhere)
        changes = diff(sides[0], sides[1], rules, strict)
        table = Table(
            Column("metric", overflow="fold"),
            "base",
            "new",
            "change",
            "%",
            "95 % CI of %",
            "rule",
            title="kdpipe compare",
        )
        for c in changes:
            pct = f"{c.percent:+.1f}" if c.percent is not None else "-"
            span = c.percent_interval
            table.add_row(
                c.metric,
                f"{c.base:.4g}",
                f"{c.new:.4g}",
                f"{c.delta:+.4g}",
                pct,
                f"{span[0]:+.1f} .. {span[1]:+.1f}" if span else "",
                Text(c.broken_by or "", style="red"),
            )
        stdout.print(table)
        broken = [c for c in changes if c.broken_by]
        if broken:
            raise BudgetError(
                f"{len(broken)} metrics regressed past --fail-on", "see the table above"
            )


@app.command("models")
def list_models(debug: Annotated[bool, Opt(help="Show tracebacks.")] = False) -> None:
    """List the torchvision names `--teacher`/`--student` accept (besides path/to/file.py:Name)."""
    with errors_reported(debug):
        from kdpipe.models import available

        for model_name in available():
            stdout.print(model_name)


@app.command("methods")
def list_methods(debug: Annotated[bool, Opt(help="Show tracebacks.")] = False) -> None:
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


@app.command()
def version() -> None:
    """Print kdpipe's version."""
    stdout.print(__version__)


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


if __name__ == "__main__":
    main()
