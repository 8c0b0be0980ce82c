"""Activation boundaries.

Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of Activation Boundaries Formed by
Hidden Neurons." AAAI 2019.

On PRE-ReLU stage outputs (taps "pre": the input of each stage's last activation; post-ReLU
values would make the loss meaningless), a connector r (1x1 conv, no bias, + BN) maps the
student to the teacher's channels. Per element, margin mu=1:

    (r(s) + mu)^2 * [r(s) > -mu and t <= 0]  +  (r(s) - mu)^2 * [r(s) <= mu and t > 0]

summed, layer weights 1, 1/2, 1/4, ... from the deepest, divided by the batch size.
Stage "init" trains with this loss alone; stage "train" then uses CE (+ KD at T).
"""

from __future__ import annotations

from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, Stage, ce_loss, match_spatial
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss


def ab_loss(s_pre: Tensor, t_pre: Tensor, margin: float = 1.0) -> Tensor:
    """Activation-boundary loss of one layer, summed over elements, divided by the batch."""
    t_on = t_pre > 0
    pos = (s_pre + margin).pow(2) * ((s_pre > -margin) & ~t_on)
    neg = (s_pre - margin).pow(2) * ((s_pre <= margin) & t_on)
    return (pos + neg).sum() / s_pre.shape[0]


@register
class ActivationBoundaries(Distiller):
    name = "ab"
    paper = "Heo et al. 2019 - Distillation of Activation Boundaries Formed by Hidden Neurons"
    stages_doc = "init -> train"
    defaults = {"margin": 1.0, "init_fraction": 0.25, "ce": 1.0, "kd": 1.0, "T": 4.0}
    kinds = ("pre",)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.connectors = self.layer_connectors("pre")
        self.stages = [Stage("init", self.params["init_fraction"]), Stage("train")]
        self.stage = "train"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        total: Tensor | float = 0.0
        layers = list(zip(self.connectors, b.s["pre"], b.t["pre"], strict=True))
        for depth, (r, s, t) in enumerate(reversed(layers)):
            s_r, t_m = match_spatial(r(s), t)
            total = total + ab_loss(s_r, t_m, self.params["margin"]) / 2**depth
        return {"ab": total}  # type: ignore[dict-item]

    def terms(self, b: Batch) -> dict[str, Tensor]:
        if self.stage == "init":
            return self.loss(b)
        assert b.z_t is not None
        p = self.params
        out = {"ce": p["ce"] * ce_loss(b.z_s, b.labels)}
        if p["kd"]:
            out["kd"] = p["kd"] * kd_loss(b.z_s, b.z_t, p["T"])
        return out
