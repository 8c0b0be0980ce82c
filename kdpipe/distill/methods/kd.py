"""Hinton knowledge distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network." NIPS DL Workshop 2015.

    L = alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(y, z_s),   p^T = softmax(z / T)

T=4, alpha=0.9 by default. The KL is teacher || student with reduction="batchmean" (a sum
over classes, mean over the batch); T^2 keeps the soft-target gradients' scale independent of T.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.methods import register


def kd_loss(z_s: Tensor, z_t: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch."""
    log_p_s = F.log_softmax(z_s / T, dim=1)
    p_t = F.softmax(z_t / T, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * (T * T)


@register
class HintonKD(Distiller):
    """Soft targets from the teacher at temperature T, mixed with the hard-label loss."""

    name = "kd"
    paper = "Hinton, Vinyals, Dean 2015 - Distilling the Knowledge in a Neural Network"
    defaults = {"T": 4.0, "alpha": 0.9}

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        return {"kd": kd_loss(b.z_s, b.z_t, self.params["T"])}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        alpha = self.params["alpha"]
        return {
            "kd": alpha * self.loss(b)["kd"],
            "ce": (1.0 - alpha) * ce_loss(b.z_s, b.labels),
        }
