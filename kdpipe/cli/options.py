"""How command-line options become config values, declared once for every command.

`CONFIG_KEYS` maps an option's parameter name to the config key(s) it sets; `PARSERS` turns
the option's text into the value where the text is a list or pairs. `--set NAME=VALUE` sets a
method hyperparameter (`--set T=4`) or, with a dotted name, any config key that has no option
of its own (`--set distill.train.weight_decay=0.01`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import yaml

from kdpipe.core.errors import ConfigError

CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    # models and weights
    "teacher": ("teacher.arch",),
    "student": ("student.arch",),
    "teacher_weights": ("teacher.weights",),
    "fine_tune_teacher": ("teacher.fine_tune",),
    "fine_tune_lr": ("teacher.fine_tune_lr",),
    "student_weights": ("student.weights",),
    # distillation
    "method": ("distill.method",),
    "terms": ("distill.terms",),
    "teacher_layers": ("distill.teacher_layers",),
    "student_layers": ("distill.student_layers",),
    "assistant": ("distill.assistants",),
    "peers": ("distill.peers",),
    "transfer": ("distill.transfer",),
    "label_fraction": ("distill.label_fraction",),
    # training
    "epochs": ("distill.train.epochs",),
    "teacher_epochs": ("teacher.train.epochs",),
    "teacher_lr": ("teacher.train.lr",),
    "batch_size": ("distill.train.batch_size", "teacher.train.batch_size"),
    "lr": ("distill.train.lr",),
    "seed": ("seed",),
    "device": ("runtime.device",),
    "amp": ("runtime.amp",),
    "compile_": ("runtime.compile",),
    "teacher_precision": ("runtime.teacher_precision",),
    "checkpoint_every": ("runtime.checkpoint_every",),
    "detect_anomaly": ("runtime.detect_anomaly",),
    "sync_bn": ("runtime.sync_bn",),
    # data
    "data": ("data.spec",),
    "image_size": ("data.image_size",),
    "strict_data": ("data.strict",),
    "workers": ("data.workers",),
    "augment": ("data.augment",),
    "crop_scale": ("data.crop_scale",),
    "center_crop": ("data.center_crop",),
    # export
    "precision": ("export.precisions",),
    "backend": ("export.backends",),
    "calibration": ("export.calibration",),
    "calibration_samples": ("export.calibration_samples",),
    "max_accuracy_drop": ("export.max_accuracy_drop",),
    "batch_range": ("export.batch_range",),
    # profile
    "batch_sizes": ("profile.batch_sizes",),
    "threads": ("profile.threads",),
    "warmup": ("profile.warmup",),
    "min_iters": ("profile.min_iters",),
    "min_seconds": ("profile.min_seconds",),
    "memory": ("profile.memory",),
    # where
    "out": ("out",),
    "name": ("name",),
}


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


PARSERS: dict[str, Callable[[Any], Any]] = {
    "terms": lambda v: number_params(csv_list(v), "--terms", "kd=0.9,ce=0.1,at=1000"),
    "teacher_layers": csv_list,
    "student_layers": csv_list,
    "peers": csv_list,
    "precision": partial(csv_list, cast=str, option="--precision"),
    "backend": partial(csv_list, cast=str, option="--backend"),
    "batch_range": partial(csv_list, cast=int, option="--batch-range"),
    "batch_sizes": partial(csv_list, cast=int, option="--batch-sizes"),
}


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
        if value is not None and param in PARSERS:
            value = PARSERS[param](value)
        out.update(dict.fromkeys(keys, value))
    out.update(set_overrides(options.get("set_")))
    return out


def set_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set NAME=VALUE`: a dotted NAME is a config key (the value read as YAML: 3, 1e-3,
    true, [1, 8]); a plain one a method hyperparameter, a number."""
    if not pairs:
        return {}
    dotted = [p for p in pairs if "." in p.partition("=")[0]]
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
