"""Similarity-preserving knowledge distillation.

Tung, Mori. "Similarity-Preserving Knowledge Distillation." ICCV 2019.

    G = row_normalize(F F^T),  F = last-stage features flattened to [B, -1]
    L = CE + gamma * ||G_s - G_t||_F^2 / B^2,   gamma=3000

G is B x B, so student and teacher shapes may differ freely.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register


def similarity(f: Tensor) -> Tensor:
    flat = f.flatten(1)
    return F.normalize(flat @ flat.t(), dim=1)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    b = f_s.shape[0]
    return (similarity(f_s) - similarity(f_t)).pow(2).sum() / (b * b)


@register
class SimilarityPreserving(Distiller):
    name = "sp"
    paper = "Tung & Mori 2019 - Similarity-Preserving Knowledge Distillation"
    defaults = {"gamma": 3000.0, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "gamma"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        f_s, f_t = (self.whole_batch(x["stages"][-1]) for x in (b.s, b.t))
        return {"sp": sp_loss(f_s, f_t)}
