"""Attention transfer.

Zagoruyko, Komodakis. "Paying More Attention to Attention." ICLR 2017.

    Q(A) = normalize(mean_c(|A|^p).flatten(1))         one map per sample, unit L2 norm
    L    = CE + beta * sum_layers mean((Q_s - Q_t)^2)     beta=1000, p=2

at every stage output. The map has no channel axis, so channel counts may differ; when the
spatial sizes differ the larger map is average-pooled to the smaller.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, match_spatial
from kdpipe.distill.methods import register


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    return F.normalize(f.abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
    f_s, f_t = match_spatial(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register
class AttentionTransfer(Distiller):
    name = "at"
    paper = "Zagoruyko & Komodakis 2017 - Paying More Attention to Attention"
    defaults = {"beta": 1000.0, "p": 2.0, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "beta"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        pairs = zip(b.s["stages"], b.t["stages"], strict=True)
        return {"at": sum(at_loss(s, t, self.params["p"]) for s, t in pairs)}  # type: ignore[dict-item]
