"""Probabilistic knowledge transfer.

Passalis, Tefas. "Learning Deep Representations with Probabilistic Knowledge Transfer." ECCV 2018.

Cosine similarities between the batch's embeddings, shifted to [0, 1] and normalized per row,
are conditional probabilities p(j|i); the student matches the teacher's:

    L = CE + w * mean_ij p_t(j|i) log(p_t(j|i) / p_s(j|i)),   w = 30000 (RepDistiller's scale)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register

EPS = 1e-7


def conditional_probabilities(e: Tensor) -> Tensor:
    n = F.normalize(e, dim=1, eps=EPS)
    sim = (n @ n.t() + 1.0) / 2.0
    return sim / sim.sum(1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    p_s, p_t = conditional_probabilities(e_s), conditional_probabilities(e_t)
    return (p_t * ((p_t + EPS) / (p_s + EPS)).log()).mean()


@register
class ProbabilisticKT(Distiller):
    name = "pkt"
    paper = "Passalis & Tefas 2018 - Probabilistic Knowledge Transfer"
    defaults = {"weight": 30000.0, "ce": 1.0}
    kinds = ("embedding",)
    weight_key = "weight"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        e_s, e_t = (self.whole_batch(x["embedding"][0]) for x in (b.s, b.t))
        return {"pkt": pkt_loss(e_s, e_t)}
