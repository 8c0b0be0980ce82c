"""Correlation congruence.

Peng et al. "Correlation Congruence for Knowledge Distillation." ICCV 2019.

Instance-to-instance correlations of the L2-normalized penultimate embeddings under a
Gaussian RBF kernel approximated by its Taylor series (P=2, gamma=0.4):

    k(x, y) = exp(-2 gamma) * sum_{p=0..P} (2 gamma)^p / p! * (x . y)^p
    L = CE + w * ||K_s - K_t||_F^2 / B^2,   w=0.02
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register


def correlation(e: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    n = F.normalize(e, dim=1)
    dots = n @ n.t()
    k = sum((2 * gamma) ** p / math.factorial(p) * dots.pow(p) for p in range(order + 1))
    return math.exp(-2 * gamma) * k  # type: ignore[return-value]


def cc_loss(e_s: Tensor, e_t: Tensor, gamma: float = 0.4, order: int = 2) -> Tensor:
    b = e_s.shape[0]
    diff = correlation(e_s, gamma, order) - correlation(e_t, gamma, order)
    return diff.pow(2).sum() / (b * b)


@register
class CorrelationCongruence(Distiller):
    name = "cc"
    paper = "Peng et al. 2019 - Correlation Congruence for Knowledge Distillation"
    defaults = {"weight": 0.02, "gamma": 0.4, "order": 2.0, "ce": 1.0}
    kinds = ("embedding",)
    weight_key = "weight"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        e_s, e_t = (self.whole_batch(x["embedding"][0]) for x in (b.s, b.t))
        return {"cc": cc_loss(e_s, e_t, self.params["gamma"], int(self.params["order"]))}
