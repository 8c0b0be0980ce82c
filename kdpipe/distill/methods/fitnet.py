"""FitNets: hints for thin deep nets.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets." ICLR 2015.

stages=2 (the paper): stage "hint" trains the student up to its guided layer plus a
regressor r so that 1/2 ||u_t(x) - r(v_s(x))||^2 is small (only layers up to the guided one
receive gradients); stage "kd" then trains the whole student with CE + lambda * H(p_t^tau,
p_s^tau), tau=3, lambda decaying linearly from 4 to 1.
stages=1 (the widely used variant): CE + beta * mean((r(f_s) - f_t)^2), beta=100.

Hint and guided layers are the stage outputs at index `layer` (default 1: ResNet's layer2).
The regressor maps the student's shape to the teacher's: 1x1 conv at the same size, 3x3
stride-2 conv when the student map is twice as large, 4x4 stride-2 transposed conv when it is
half as large, pooling otherwise; then BN + ReLU. It is trained, never exported.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Size, Tensor, nn

from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Batch, Distiller, Stage, ce_loss
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss


def hint_loss(u_t: Tensor, r_v_s: Tensor) -> Tensor:
    """1/2 * ||u_t - r(v_s)||^2 per sample (sum over the feature), averaged over the batch."""
    return 0.5 * (u_t - r_v_s).pow(2).flatten(1).sum(1).mean()


def regressor(s: Size, t: Size) -> nn.Module:
    cs, hs, ct, ht = s[1], s[2], t[1], t[2]
    conv: nn.Module
    if hs == ht:
        conv = nn.Conv2d(cs, ct, 1, bias=False)
    elif hs == 2 * ht:
        conv = nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=False)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=False)
    else:
        conv = nn.Sequential(nn.AdaptiveAvgPool2d(tuple(t[2:])), nn.Conv2d(cs, ct, 1, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(ct), nn.ReLU(inplace=True))


@register
class FitNet(Distiller):
    name = "fitnet"
    paper = "Romero et al. 2015 - FitNets: Hints for Thin Deep Nets"
    stages_doc = "hint -> kd (stages=2) | train (stages=1)"
    defaults = {
        "stages": 2.0,
        "layer": 1.0,
        "hint_fraction": 0.5,
        "T": 3.0,
        "lambda_start": 4.0,
        "lambda_end": 1.0,
        "beta": 100.0,
    }
    kinds = ("stages",)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.params["stages"] not in (1, 2):
            raise ConfigError("fitnet stages must be 1 or 2", "--set stages=2 (hint, then KD)")
        s_shapes, t_shapes = self.probe_shapes()
        n = len(s_shapes["stages"])
        self.index = min(max(int(self.params["layer"]), 0), n - 1)
        self.regressor = regressor(s_shapes["stages"][self.index], t_shapes["stages"][self.index])
        if self.params["stages"] == 2:
            self.stages = [Stage("hint", self.params["hint_fraction"]), Stage("kd")]
            self.stage = "kd"

    def _hint(self, b: Batch) -> tuple[Tensor, Tensor]:
        return self.regressor(b.s["stages"][self.index]), b.t["stages"][self.index]

    def loss(self, b: Batch) -> dict[str, Tensor]:
        r, u = self._hint(b)
        return {"hint": F.mse_loss(r, u)}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        if self.params["stages"] == 1:
            return {
                "hint": self.params["beta"] * self.loss(b)["hint"],
                "ce": ce_loss(b.z_s, b.labels),
            }
        if self.stage == "hint":
            r, u = self._hint(b)
            return {"hint": hint_loss(u, r)}
        p = self.params
        lam = p["lambda_start"] + (p["lambda_end"] - p["lambda_start"]) * self.progress
        T = p["T"]
        # The paper's H(p_t, p_s) is a cross-entropy: the KL without T^2, plus a constant.
        return {"kd": lam * kd_loss(b.z_s, b.z_t, T) / (T * T), "ce": ce_loss(b.z_s, b.labels)}
