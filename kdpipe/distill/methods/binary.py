"""Knowledge transfer to a binary-weight student.

Xu, Rui, Chen, Wang. "Learning to Detect with a Binary-Weight Network via Knowledge Transfer"
(knowledge transfer for binary-weight networks), ICRA 2019.

Every convolution and linear layer of the student except the first and the last keeps a
latent float weight W and computes with alpha * sign(W), alpha = mean |W| per output channel;
the gradient passes straight through sign() to W. The loss is the task loss plus feature
imitation of the teacher on the backbone stages (1x1 conv + BN connectors bridge channels):

    L = CE + lambda * sum_layers mean((r(f_s) - f_t)^2),   lambda=1

After training the binarized weights are written into the student (torch parametrizations are
removed with leave_parametrized=True), so the exported ONNX holds weights that really are +-alpha
per output channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from kdpipe.distill.base import Batch, Distiller, match_spatial
from kdpipe.distill.methods import register


def binarize(w: Tensor) -> Tensor:
    """alpha * sign(w) with alpha = mean |w| per output channel; straight-through gradient."""
    alpha = w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
    sign = torch.where(w >= 0, 1.0, -1.0).to(w.dtype)
    return alpha * (w + (sign - w).detach())


class Binarize(nn.Module):
    def forward(self, w: Tensor) -> Tensor:
        return binarize(w)


def binarizable(model: nn.Module) -> list[nn.Module]:
    """Convolutions and linear layers, without the first and the last (kept in float)."""
    layers: list[nn.Module] = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return layers[1:-1]


@register
class BinaryWeights(Distiller):
    name = "binary"
    paper = "Xu et al. 2019 - knowledge transfer to a binary-weight network (ICRA)"
    defaults = {"lam": 1.0, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "lam"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.connectors = self.layer_connectors("stages")
        self.binarized = binarizable(self.student_model)
        for layer in self.binarized:
            parametrize.register_parametrization(layer, "weight", Binarize())

    def loss(self, b: Batch) -> dict[str, Tensor]:
        total: Tensor | float = 0.0
        for r, s, t in zip(self.connectors, b.s["stages"], b.t["stages"], strict=True):
            s_r, t_m = match_spatial(r(s), t)
            total = total + F.mse_loss(s_r, t_m)
        return {"features": total}  # type: ignore[dict-item]

    def finish(self, val: torch.utils.data.Dataset) -> dict:
        """Bake alpha * sign(W) into the student's weights for export."""
        for layer in self.binarized:
            if parametrize.is_parametrized(layer, "weight"):
                parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        return {"binarized_layers": len(self.binarized)}
