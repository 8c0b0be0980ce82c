"""Neuron selectivity transfer.

Huang, Wang. "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer." 2017.

Each channel's spatial response, normalized to unit length, is a sample of that network's
"neuron selectivity"; NST matches the two distributions with the squared MMD under the
polynomial kernel k(a, b) = (a . b)^2:

    L = CE + w * sum_layers [ mean k(t,t) + mean k(s,s) - 2 mean k(s,t) ],   w=50

Channel counts may differ; spatial sizes are matched by average pooling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, match_spatial
from kdpipe.distill.methods import register


def _mean_poly(a: Tensor, b: Tensor) -> Tensor:
    """mean over samples and channel pairs (i, j) of (a_i . b_j)^2, for a [B, Ca, HW] and
    b [B, Cb, HW]. The sum over pairs is ||a b^T||_F^2 = <a^T a, b^T b>_F, two HW x HW Grams:
    far cheaper than the Ca x Cb kernel matrix in deep stages, where HW is small and C large."""
    ca, cb, hw = a.shape[1], b.shape[1], a.shape[2]
    if ca * cb <= hw * (ca + cb):  # early stages: the channel-pair matrix is the smaller
        return (a @ b.transpose(1, 2)).pow(2).mean()
    gram_a = a.transpose(1, 2) @ a
    gram_b = gram_a if b is a else b.transpose(1, 2) @ b
    return (gram_a * gram_b).sum((1, 2)).mean() / (ca * cb)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = match_spatial(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return _mean_poly(t, t) + _mean_poly(s, s) - 2 * _mean_poly(s, t)


@register
class NeuronSelectivity(Distiller):
    name = "nst"
    paper = "Huang & Wang 2017 - Like What You Like: Neuron Selectivity Transfer"
    defaults = {"weight": 50.0, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "weight"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        pairs = zip(b.s["stages"], b.t["stages"], strict=True)
        return {"nst": sum(nst_loss(s, t) for s, t in pairs)}  # type: ignore[dict-item]
