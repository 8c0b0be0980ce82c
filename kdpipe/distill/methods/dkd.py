"""Decoupled knowledge distillation.

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation." CVPR 2022.

KD split into a target-class part and a non-target part, weighted separately:
    TCKD = T^2 KL([p_t^gt, 1-p_t^gt] || [p_s^gt, 1-p_s^gt])                 (binary)
    NCKD = T^2 KL(p_t^T over non-target classes || p_s^T over them)           (target masked)
    L = CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)
alpha=1, beta=8, T=4, warmup=20 epochs. Unlabeled samples use the teacher's class as target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register

MASK = 1000.0  # subtracted from the target logit: its softmax weight becomes 0


def dkd_parts(z_s: Tensor, z_t: Tensor, target: Tensor, T: float) -> tuple[Tensor, Tensor]:
    gt = F.one_hot(target, z_s.shape[1]).to(z_s.dtype)
    p_s, p_t = F.softmax(z_s / T, 1), F.softmax(z_t / T, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(b_s.clamp_min(1e-12).log(), b_t, reduction="batchmean") * T * T
    log_nt_s = F.log_softmax(z_s / T - MASK * gt, 1)
    nt_t = F.softmax(z_t / T - MASK * gt, 1)
    nckd = F.kl_div(log_nt_s, nt_t, reduction="batchmean") * T * T
    return tckd, nckd


def dkd_loss(
    z_s: Tensor, z_t: Tensor, target: Tensor, alpha: float, beta: float, T: float
) -> Tensor:
    tckd, nckd = dkd_parts(z_s, z_t, target, T)
    return alpha * tckd + beta * nckd


@register
class DecoupledKD(Distiller):
    name = "dkd"
    paper = "Zhao et al. 2022 - Decoupled Knowledge Distillation"
    defaults = {"alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0, "ce": 1.0}

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        p = self.params
        return {"dkd": dkd_loss(b.z_s, b.z_t, b.targets(), p["alpha"], p["beta"], p["T"])}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        out = super().terms(b)
        out["dkd"] = out["dkd"] * min(self.epoch / max(self.params["warmup"], 1e-9), 1.0)
        return out
