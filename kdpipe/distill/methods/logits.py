"""Logit regression.

Ba, Caruana. "Do Deep Nets Really Need to be Deep?" NeurIPS 2014.

    L = mean((z_s - z_t)^2)        on pre-softmax logits, no label term by default

It is the high-temperature limit of KD when the logits have zero mean. `ce` > 0 adds the
hard-label cross-entropy.
"""

from __future__ import annotations

from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register


def logit_mse(z_s: Tensor, z_t: Tensor) -> Tensor:
    """Mean squared difference of the logits over batch and classes."""
    return (z_s - z_t).pow(2).mean()


@register
class LogitRegression(Distiller):
    name = "logits"
    paper = "Ba & Caruana 2014 - Do Deep Nets Really Need to be Deep?"
    defaults = {"weight": 1.0, "ce": 0.0}
    weight_key = "weight"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        return {"logits": logit_mse(b.z_s, b.z_t)}
