"""Registry of distillation methods: `@register` on a Distiller class, `get(name)` to build one."""

from __future__ import annotations

import importlib
from typing import TypeVar

from kdpipe.core.errors import ConfigError, did_you_mean
from kdpipe.distill.base import Distiller

_REGISTRY: dict[str, type[Distiller]] = {}
# Method modules, imported on first lookup so each registers itself.
_MODULES = (
    "ce",
    # the knowledge-distillation review's twelve
    "mimic",
    "logits",
    "kd",
    "fitnet",
    "at",
    "adversarial",
    "jacobian",
    "dml",
    "projection",
    "takd",
    "ab",
    "binary",
    # the strongest frameworks' others
    "sp",
    "rkd",
    "pkt",
    "crd",
    "dkd",
    "nst",
    "cc",
    "vid",
    "ft",
    "fsp",
)

D = TypeVar("D", bound=type[Distiller])


def register(cls: D) -> D:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"kdpipe.distill.methods.{module}")


def all_methods() -> dict[str, type[Distiller]]:
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[Distiller]:
    methods = all_methods()
    if name not in methods:
        raise ConfigError(
            f"unknown distillation method '{name}'",
            did_you_mean(name, methods) or f"available: {', '.join(methods)}",
        )
    return methods[name]
