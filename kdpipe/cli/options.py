"""Command-line options, declared once for every command: `OPTIONS` holds each option's config
key(s), --help panel and text, and how its text becomes the value. `--set NAME=VALUE` sets a
method hyperparameter (`--set T=4`) or, with a dotted name, any config key that has no option
of its own (`--set distill.train.weight_decay=0.01`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import typer
import yaml

from kdpipe.core.config import RunConfig
from kdpipe.core.errors import ConfigError

MODELS, DISTILL, TRAIN, DATA = "Models", "Distillation", "Training", "Data"
EXPORT, PROFILE, RUN, PROCS = "Export", "Profile", "Run directory", "Processes"


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


def positive_sizes(value: str | None, option: str) -> list[int] | None:
    """A comma-separated list of sizes, each at least 1."""
    sizes = csv_list(value, int, option)
    if sizes is not None and (not sizes or any(v < 1 for v in sizes)):
        raise ConfigError(f"{option} takes positive sizes, got '{value}'", f"e.g. {option} 3,32,32")
    return sizes


@dataclass(frozen=True)
class Option:
    """A command-line option: the config keys it sets, its --help panel and text, its flags
    where typer's default (--NAME / --no-NAME) is not wanted, its least value, and how its text
    becomes the value where the text is a list or pairs."""

    keys: tuple[str, ...]
    panel: str
    help: str
    flags: tuple[str, ...] = ()
    minimum: int | None = None
    parse: Callable[[Any], Any] | None = None  # the option's text -> the value (lists, pairs)


OPTIONS: dict[str, Option] = {
    "teacher": Option(
        ("teacher.arch",),
        MODELS,
        "Teacher architecture: any torchvision classifier, or your own path/to/file.py:Name "
        "(an nn.Module class or a function returning one).",
    ),
    "student": Option(("student.arch",), MODELS, "Student architecture (as --teacher)."),
    "teacher_weights": Option(
        ("teacher.weights",),
        MODELS,
        "Teacher state_dict file, or torchvision[:TAG] for torchvision's ImageNet weights "
        "from its local cache (fine-tuned, with a fresh classifier, on data of other "
        "classes). Without it the teacher is trained (and cached).",
    ),
    "fine_tune_teacher": Option(
        ("teacher.fine_tune",),
        MODELS,
        "Train the teacher from --teacher-weights (the teacher recipe) instead of using them "
        "as given; weights for other classes get a fresh classifier.",
        flags=("--fine-tune-teacher",),
    ),
    "fine_tune_lr": Option(
        ("teacher.fine_tune_lr",),
        MODELS,
        "Learning rate of a teacher trained from weights (default 1e-3).",
    ),
    "student_weights": Option(
        ("student.weights",),
        MODELS,
        "Student state_dict file to start from, or torchvision[:TAG] (as --teacher-weights; "
        "weights for other classes start all but the classifier).",
    ),
    "method": Option(("distill.method",), DISTILL, "Distillation method (see `kdpipe methods`)."),
    "set_": Option(
        (),
        DISTILL,
        "Method hyperparameter NAME=NUMBER, or any config key: dotted.key=VALUE (repeatable; "
        "e.g. --set T=4 --set distill.train.weight_decay=0.01).",
        flags=("--set",),
    ),
    "terms": Option(
        ("distill.terms",),
        DISTILL,
        "Compose methods: METHOD=WEIGHT,... e.g. kd=0.9,ce=0.1,at=1000.",
        parse=lambda v: number_params(csv_list(v), "--terms", "kd=0.9,ce=0.1,at=1000"),
    ),
    "teacher_layers": Option(
        ("distill.teacher_layers",),
        DISTILL,
        "Teacher layers to tap, e.g. layer2,layer3 (default: stages).",
        parse=csv_list,
    ),
    "student_layers": Option(
        ("distill.student_layers",),
        DISTILL,
        "Student layers to tap, as many as --teacher-layers.",
        parse=csv_list,
    ),
    "assistant": Option(
        ("distill.assistants",),
        DISTILL,
        "TAKD teacher assistant architecture (repeatable, in order).",
    ),
    "peers": Option(
        ("distill.peers",),
        DISTILL,
        "DML peers besides the student, e.g. resnet18,mobilenet_v3_small.",
        parse=csv_list,
    ),
    "transfer": Option(
        ("distill.transfer",),
        DISTILL,
        "Teacher-labelled transfer set: mix | imagefolder:PATH (unlabeled images).",
    ),
    "label_fraction": Option(
        ("distill.label_fraction",),
        DISTILL,
        "Fraction of training labels the student sees (default 1).",
    ),
    "epochs": Option(("distill.train.epochs",), TRAIN, "Distillation epochs."),
    "teacher_epochs": Option(("teacher.train.epochs",), TRAIN, "Epochs when training the teacher."),
    "teacher_lr": Option(
        ("teacher.train.lr",),
        TRAIN,
        "Peak learning rate when training the teacher (default 3e-3).",
    ),
    "batch_size": Option(
        ("distill.train.batch_size", "teacher.train.batch_size"),
        TRAIN,
        "Training batch size (teacher and student).",
    ),
    "lr": Option(("distill.train.lr",), TRAIN, "Peak learning rate of the student."),
    "seed": Option(("seed",), TRAIN, "Seed for splits, initialization and order."),
    "device": Option(("runtime.device",), TRAIN, "Training device: auto | cpu | cuda."),
    "amp": Option(
        ("runtime.amp",),
        TRAIN,
        "CUDA: mixed precision (bf16, else fp16).",
        flags=("--amp/--no-amp",),
    ),
    "compile_": Option(
        ("runtime.compile",),
        TRAIN,
        "CUDA: torch.compile the student.",
        flags=("--compile",),
    ),
    "teacher_precision": Option(
        ("runtime.teacher_precision",),
        TRAIN,
        "Teacher inference: auto (half on CUDA, bf16 on CPUs that have it) | fp32 | bf16 | fp16.",
    ),
    "checkpoint_every": Option(
        ("runtime.checkpoint_every",),
        TRAIN,
        "Also checkpoint every N steps (always at epoch ends).",
    ),
    "detect_anomaly": Option(
        ("runtime.detect_anomaly",),
        TRAIN,
        "Autograd anomaly mode (slow; finds NaN sources).",
        flags=("--detect-anomaly",),
    ),
    "data": Option(
        ("data.spec",),
        DATA,
        "digits | imagefolder:PATH | imagenet:ROOT | cifar10:ROOT | cifar100:ROOT | "
        "mnist:ROOT | fashion-mnist:ROOT",
    ),
    "image_size": Option(("data.image_size",), DATA, "Input height/width (digits default 32)."),
    "augment": Option(
        ("data.augment",),
        DATA,
        "Random training augmentation: none | crop | flip | crop-flip | resized-crop | "
        "resized-crop-flip (a shifted crop in a padded border, CIFAR's; a crop of random area "
        "and aspect resized back, ImageNet's; a horizontal flip). The teacher then runs every "
        "batch.",
    ),
    "crop_scale": Option(
        ("data.crop_scale",),
        DATA,
        "resized-crop's smallest crop, a fraction of the image area (default 0.08).",
    ),
    "center_crop": Option(
        ("data.center_crop",),
        DATA,
        "Image files: resize the shorter side to image-size / F and cut the central square, "
        "as ImageNet is evaluated (0.875: 256 -> 224). Default: the whole image resized to a "
        "square.",
    ),
    "strict_data": Option(
        ("data.strict",),
        DATA,
        "Fail on an undecodable image instead of skipping it.",
        flags=("--strict-data",),
    ),
    "workers": Option(
        ("data.workers",),
        DATA,
        "DataLoader worker processes per training process (default: none on the CPU; on a "
        "GPU, for image files, the cores less one, at most 8).",
        minimum=0,
    ),
    "precision": Option(
        ("export.precisions",),
        EXPORT,
        "Export precisions, comma-separated: fp32,fp16,int8.",
        parse=partial(csv_list, cast=str, option="--precision"),
    ),
    "backend": Option(
        ("export.backends",),
        EXPORT,
        "Export backends: onnx,tensorrt (TensorRT needs a GPU).",
        parse=partial(csv_list, cast=str, option="--backend"),
    ),
    "calibration": Option(
        ("export.calibration",),
        EXPORT,
        "INT8 calibration: minmax | entropy | percentile.",
    ),
    "calibration_samples": Option(
        ("export.calibration_samples",),
        EXPORT,
        "Training images used for INT8 calibration.",
    ),
    "max_accuracy_drop": Option(
        ("export.max_accuracy_drop",),
        EXPORT,
        "Largest INT8 top-1 drop vs FP32, in points (default 1).",
    ),
    "batch_range": Option(
        ("export.batch_range",),
        EXPORT,
        "TensorRT profile batch sizes MIN,OPT,MAX.",
        parse=partial(csv_list, cast=int, option="--batch-range"),
    ),
    "batch_sizes": Option(
        ("profile.batch_sizes",),
        PROFILE,
        "Profile batch sizes, comma-separated (default 1,32).",
        parse=partial(csv_list, cast=int, option="--batch-sizes"),
    ),
    "ship_batch": Option(
        ("profile.ship_batch",),
        PROFILE,
        "Batch size to ship at: the bundle's default is the form measured fastest there "
        "within --max-accuracy-drop (default 1; profiled too).",
        minimum=1,
    ),
    "threads": Option(
        ("profile.threads",),
        PROFILE,
        "CPU threads for profiling (default: all cores); recorded.",
    ),
    "min_iters": Option(
        ("profile.min_iters",),
        PROFILE,
        "Profile: timed calls per model, at least.",
    ),
    "min_seconds": Option(
        ("profile.min_seconds",),
        PROFILE,
        "Profile: timed seconds per model, at least.",
    ),
    "memory": Option(
        ("profile.memory",),
        PROFILE,
        "Measure memory per backend.",
        flags=("--memory/--no-memory",),
    ),
    "warmup": Option(("profile.warmup",), PROFILE, "Warm-up calls, at least."),
    "out": Option(("out",), RUN, "Run directory (default runs/<name>)."),
    "name": Option(("name",), RUN, "Run name (default TEACHER-to-STUDENT-DATA)."),
    "config": Option((), RUN, "YAML or TOML config file; options override it."),
    "force": Option(
        (),
        RUN,
        "Redo a stage and those after it: teacher, distill, export, profile, all.",
    ),
    "until": Option((), RUN, "Stop after this stage: teacher, distill, export, profile, report."),
    "sync_bn": Option(
        ("runtime.sync_bn",),
        PROCS,
        "Under --nproc/torchrun: BatchNorm over the global batch, as one process.",
        flags=("--sync-bn",),
    ),
    "nproc": Option(
        (),
        PROCS,
        "Train on N processes here (starts torchrun's elastic launcher).",
        minimum=1,
    ),
    "max_restarts": Option(
        (),
        PROCS,
        "With --nproc: after a process fails, start them all again up to N times; each "
        "restart resumes from the last checkpoint.",
        minimum=0,
    ),
}
CONFIG_KEYS = {name: o.keys for name, o in OPTIONS.items() if o.keys}


def opt(name: str) -> Any:
    """The typer option declared for parameter `name` (`Annotated[str | None, opt("teacher")]`)."""
    o = OPTIONS[name]
    return typer.Option(*o.flags, help=o.help, rich_help_panel=o.panel, min=o.minimum)


def overrides_of(options: Mapping[str, Any], sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Dotted config keys -> values for the options a command was given (None: not given),
    only those of `sections` when named (`kdpipe export --out` is where to export, not the
    run directory). Parameters of the command that set no config key are left out."""
    out: dict[str, Any] = {}
    for param, keys in CONFIG_KEYS.items():
        keys = tuple(k for k in keys if not sections or k.split(".")[0] in sections)
        if param not in options or not keys:
            continue
        value = options[param]
        parse = OPTIONS[param].parse
        if value is not None and parse is not None:
            value = parse(value)
        out.update(dict.fromkeys(keys, value))
    out.update(set_overrides(options.get("set_")))
    return out


def set_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set NAME=VALUE`: a NAME under a config section (distill.train.lr) is that config key,
    its value read as YAML (3, 1e-3, true, [1, 8]); any other a method hyperparameter, a number
    (T, or METHOD.NAME in a composition: at.p)."""
    if not pairs:
        return {}
    sections = tuple(f"{s}." for s in RunConfig.model_fields)
    dotted = [p for p in pairs if p.partition("=")[0].strip().startswith(sections)]
    params = number_params([p for p in pairs if p not in dotted])
    out: dict[str, Any] = {"distill.params": params} if params else {}
    for pair in dotted:
        key, sep, text = pair.partition("=")
        if not sep or not text.strip():
            raise ConfigError(
                f"--set takes NAME=VALUE, got '{pair}'", "e.g. --set distill.train.lr=1e-3"
            )
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(
                f"--set {key} takes a YAML value, got '{text}'",
                "e.g. --set distill.train.lr=1e-3",
            ) from None
    return out
