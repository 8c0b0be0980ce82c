"""Plain supervised training, no teacher: the teacher's own recipe and the student baseline."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Distiller
from kdpipe.distill.methods import register


@register
class CrossEntropy(Distiller):
    """L = CE(y, z_s). Trains a model from labels alone (the baseline every method must beat)."""

    name = "ce"
    paper = "baseline: supervised cross-entropy (no distillation)"
    defaults = {"label_smoothing": 0.0}
    needs_teacher = False
    logits_only = False

    def forward(
        self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        z_s = self.student_model(images)
        ce = F.cross_entropy(z_s, labels, label_smoothing=self.params["label_smoothing"])
        return z_s, {"ce": ce}
