"""Plain supervised training, no teacher: the teacher's own recipe and the student baseline."""

from __future__ import annotations

from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.methods import register


@register
class CrossEntropy(Distiller):
    """L = CE(y, z_s). Trains a model from labels alone (the baseline every method must beat)."""

    name = "ce"
    paper = "baseline: supervised cross-entropy (no distillation)"
    defaults = {"label_smoothing": 0.0}
    needs_teacher = False

    def loss(self, b: Batch) -> dict[str, Tensor]:
        return {"ce": ce_loss(b.z_s, b.labels, self.params["label_smoothing"])}
