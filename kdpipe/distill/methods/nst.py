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


def _poly(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.transpose(1, 2)).pow(2)


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = match_spatial(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return _poly(t, t).mean() + _poly(s, s).mean() - 2 * _poly(s, t).mean()


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
