"""The Distiller contract every method implements (design.md).

A Distiller owns the student, a frozen teacher and any extra trainable modules (regressors,
connectors, discriminators). `forward` returns the student's logits and the named, already
weighted loss terms; the trainer sums them and logs each. `student()` hands back the plain
student for export: no wrapper, no teacher, no hooks.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from kdpipe.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class Stage:
    """One training phase of a method (FitNets/AB have a hint stage before KD; most have one)."""

    name: str
    epochs_fraction: float = 1.0


class Distiller(nn.Module, abc.ABC):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    needs_teacher: ClassVar[bool] = True
    # True when the loss needs only the teacher's logits, which may then be computed once
    # per sample and cached instead of running the teacher every step.
    logits_only: ClassVar[bool] = True

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, **params: float):
        super().__init__()
        unknown = [k for k in params if k not in self.defaults]
        if unknown:
            hint = did_you_mean(unknown[0], self.defaults) or (
                f"'{self.name}' takes: {', '.join(self.defaults) or 'no parameters'}"
            )
            raise ConfigError(f"method '{self.name}' has no parameter '{unknown[0]}'", hint)
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method '{self.name}' needs a teacher", "pass --teacher NAME")
        self.params: dict[str, float] = {**self.defaults, **params}
        self.student_model = student
        self.teacher_model = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.stages: list[Stage] = [Stage("train")]

    def train(self, mode: bool = True) -> Distiller:
        """Train the student and extras; the teacher always stays in eval (BN/dropout frozen)."""
        super().train(mode)
        if self.teacher_model is not None:
            self.teacher_model.eval()
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and extra modules, never the teacher."""
        for name, child in self.named_children():
            if name != "teacher_model":
                yield from child.parameters()

    def student(self) -> nn.Module:
        return self.student_model

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        assert self.teacher_model is not None
        return self.teacher_model(images)

    @abc.abstractmethod
    def forward(
        self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits and the named, weighted loss terms. `teacher_logits` comes from the
        cache when the trainer has one; otherwise the method runs the teacher itself."""
