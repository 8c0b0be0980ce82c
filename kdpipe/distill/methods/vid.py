"""Variational information distillation.

Ahn, Hu, Damianou, Lawrence, Dai. "Variational Information Distillation for Knowledge
Transfer." CVPR 2019.

Maximizes a variational lower bound on the mutual information between teacher and student
features: the teacher feature t is modelled as a Gaussian whose mean mu(s) is predicted from
the student by a small conv net and whose per-channel variance is softplus(a) + eps:

    L = CE + w * sum_layers mean( 1/2 * (log sigma^2 + (t - mu(s))^2 / sigma^2) ),   w=1

The regressors and variances are trained with the student and never exported.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Size, Tensor, nn

from kdpipe.distill.base import Batch, Distiller, match_spatial
from kdpipe.distill.methods import register

EPS = 1e-5


def vid_loss(mean: Tensor, log_scale_param: Tensor, t: Tensor) -> Tensor:
    """Gaussian negative log-likelihood of t (constant dropped), variance softplus(a) + eps."""
    var = (F.softplus(log_scale_param) + EPS).view(1, -1, *([1] * (t.dim() - 2)))
    return (0.5 * (torch.log(var) + (t - mean).pow(2) / var)).mean()


class VariationalRegressor(nn.Module):
    def __init__(self, s: Size, t: Size, init_var: float = 5.0) -> None:
        super().__init__()
        c_in, c_out = s[1], t[1]
        self.mean = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 1, bias=False),
        )
        # softplus^-1(init_var): start with a broad variance, as the authors do.
        init = math.log(math.expm1(init_var - EPS))
        self.log_scale = nn.Parameter(torch.full((c_out,), init))

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        mean, t = match_spatial(self.mean(f_s), f_t)
        return vid_loss(mean, self.log_scale, t)


@register
class VariationalInformation(Distiller):
    name = "vid"
    paper = "Ahn et al. 2019 - Variational Information Distillation for Knowledge Transfer"
    defaults = {"weight": 1.0, "init_var": 5.0, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "weight"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        s_shapes, t_shapes = self.probe_shapes()
        self.regressors = nn.ModuleList(
            VariationalRegressor(s, t, self.params["init_var"])
            for s, t in zip(s_shapes["stages"], t_shapes["stages"], strict=True)
        )

    def loss(self, b: Batch) -> dict[str, Tensor]:
        parts = zip(self.regressors, b.s["stages"], b.t["stages"], strict=True)
        return {"vid": sum(r(s, t) for r, s, t in parts)}  # type: ignore[dict-item]
