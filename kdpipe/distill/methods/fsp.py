"""Flow of solution procedure (FSP) matrices.

Yim, Joo, Bae, Kim. "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning." CVPR 2017.

For consecutive stage outputs F1 [B,C1,H,W] and F2 [B,C2,H,W] (F1 pooled to F2's size):

    G(F1, F2) = F1 F2^T / (H W)                    [B, C1, C2]
    L_fsp     = sum_pairs mean((G_s - G_t)^2)

Stage "init" trains the student with L_fsp alone; stage "train" then uses CE. Student stages
are mapped to the teacher's channel counts by 1x1 conv + BN connectors (trained, not exported).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, Stage, ce_loss
from kdpipe.distill.methods import register


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    if f1.shape[2:] != f2.shape[2:]:
        f1 = F.adaptive_avg_pool2d(f1, (f2.shape[2], f2.shape[3]))
    hw = f2.shape[2] * f2.shape[3]
    return f1.flatten(2) @ f2.flatten(2).transpose(1, 2) / hw


def fsp_loss(s_feats: list[Tensor], t_feats: list[Tensor]) -> Tensor:
    total: Tensor | float = 0.0
    for i in range(len(s_feats) - 1):
        g_s = fsp_matrix(s_feats[i], s_feats[i + 1])
        g_t = fsp_matrix(t_feats[i], t_feats[i + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total  # type: ignore[return-value]


@register
class FSP(Distiller):
    name = "fsp"
    paper = "Yim et al. 2017 - A Gift from Knowledge Distillation (FSP matrices)"
    stages_doc = "init -> train"
    defaults = {"beta": 1.0, "init_fraction": 0.5, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "beta"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.connectors = self.layer_connectors("stages")
        self.stages = [Stage("init", self.params["init_fraction"]), Stage("train")]
        self.stage = "train"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        s = [r(f) for r, f in zip(self.connectors, b.s["stages"], strict=True)]
        return {"fsp": fsp_loss(s, b.t["stages"])}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        if self.stage == "init":
            return {"fsp": self.params["beta"] * self.loss(b)["fsp"]}
        return {"ce": self.params["ce"] * ce_loss(b.z_s, b.labels)}
