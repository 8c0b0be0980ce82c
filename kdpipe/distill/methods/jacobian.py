"""Jacobian matching.

Srinivas, Fleuret. "Knowledge Transfer with Jacobian Matching." ICML 2018.

J = d z_y / d x, the input gradient of the ground-truth-class logit (one per sample; the full
Jacobian is too costly). The student's J keeps its graph (double backprop, so the matching
term's gradient reaches the student's weights); the teacher's is computed with grad enabled
and detached.

    L = alpha * KD_T + (1 - alpha) * CE + lam * mean_b || J_s/||J_s||_2 - J_t/||J_t||_2 ||^2

alpha=0.9, T=4, lam=1: the method is unstable alone, so it is added to KD. Unlabeled samples
use the teacher's predicted class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss


def input_gradient(logits: Tensor, x: Tensor, target: Tensor, create_graph: bool) -> Tensor:
    """d logits[b, target[b]] / d x[b] for every sample b (the samples are independent)."""
    picked = logits.gather(1, target[:, None]).sum()
    (grad,) = torch.autograd.grad(picked, x, create_graph=create_graph)
    return grad


def jacobian_loss(j_s: Tensor, j_t: Tensor) -> Tensor:
    s = F.normalize(j_s.flatten(1), dim=1)
    t = F.normalize(j_t.flatten(1), dim=1)
    return (s - t).pow(2).sum(1).mean()


@register
class JacobianMatching(Distiller):
    name = "jacobian"
    paper = "Srinivas & Fleuret 2018 - Knowledge Transfer with Jacobian Matching"
    defaults = {"lam": 1.0, "alpha": 0.9, "T": 4.0}
    composable = False
    reads_doc = "logits, input gradients"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        # PyTorch has no second derivative for these (MobileNetV3 uses both).
        lacking = {
            type(m).__name__
            for m in self.student_model.modules()
            if isinstance(m, (nn.Hardsigmoid, nn.Hardswish))
        }
        if lacking:
            raise ConfigError(
                f"jacobian matching needs double backprop, which PyTorch lacks for "
                f"{', '.join(sorted(lacking))} in this student",
                "pick a student without them (resnet18, mobilenet_v2, efficientnet_b0, ...)",
            )

    def forward(
        self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.teacher_model is not None
        x_t = images.detach().requires_grad_(True)
        with torch.enable_grad():
            z_t = self.teacher_model(x_t)
        target = torch.where(labels >= 0, labels, z_t.argmax(1))
        j_t = input_gradient(z_t, x_t, target, create_graph=False).detach()
        x_s = images.detach().requires_grad_(True)
        z_s = self.student_model(x_s)
        j_s = input_gradient(z_s, x_s, target, create_graph=self.training)
        b = Batch(images, labels, z_s, z_t.detach())
        b.s["jacobian"], b.t["jacobian"] = [j_s], [j_t]
        return z_s, self.terms(b)

    def loss(self, b: Batch) -> dict[str, Tensor]:
        return {"jacobian": jacobian_loss(b.s["jacobian"][0], b.t["jacobian"][0])}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        p = self.params
        return {
            "kd": p["alpha"] * kd_loss(b.z_s, b.z_t, p["T"]),
            "ce": (1 - p["alpha"]) * ce_loss(b.z_s, b.labels),
            "jacobian": p["lam"] * self.loss(b)["jacobian"],
        }
