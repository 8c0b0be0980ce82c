"""Factor transfer.

Kim, Park, Kwak. "Paraphrasing Complex Network: Network Compression via Factor Transfer."
NeurIPS 2018.

A paraphraser (conv autoencoder) is first trained on the teacher's last-stage features to
reconstruct them (stage "paraphraser", L2 reconstruction); its encoder output, with
k = `rate` * C_t channels, is the teacher factor F_t. A translator (convs on the student's
last stage) produces the student factor F_s. Then

    L = CE + beta * mean_b || F_t/||F_t||_2 - F_s/||F_s||_2 ||_1,     beta=200, p=1

The paraphraser and translator are trained, never exported.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.distill.base import Batch, Distiller, Stage, match_spatial
from kdpipe.distill.methods import register


def ft_loss(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """Mean over the batch of the L1 distance of the L2-normalized, flattened factors."""
    s = F.normalize(factor_s.flatten(1), dim=1)
    t = F.normalize(factor_t.flatten(1), dim=1)
    return (s - t).abs().sum(1).mean()


def _conv(c_in: int, c_out: int, transposed: bool = False) -> list[nn.Module]:
    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    return [conv(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(*_conv(c, c), *_conv(c, k), *_conv(k, k))
        self.decoder = nn.Sequential(*_conv(k, k, True), *_conv(k, c, True), *_conv(c, c, True))

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.encoder(f)
        return factor, self.decoder(factor)


@register
class FactorTransfer(Distiller):
    name = "ft"
    paper = "Kim, Park, Kwak 2018 - Paraphrasing Complex Network: Factor Transfer"
    stages_doc = "paraphraser -> train"
    defaults = {"beta": 200.0, "rate": 0.5, "init_fraction": 0.25, "ce": 1.0}
    kinds = ("stages",)
    weight_key = "beta"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        s_shapes, t_shapes = self.probe_shapes()
        c_s, c_t = s_shapes["stages"][-1][1], t_shapes["stages"][-1][1]
        k = max(1, int(round(c_t * self.params["rate"])))
        self.paraphraser = Paraphraser(c_t, k)
        self.translator = nn.Sequential(*_conv(c_s, c_s), *_conv(c_s, k), *_conv(k, k))
        self.stages = [Stage("paraphraser", self.params["init_fraction"]), Stage("train")]
        self.stage = "train"

    def loss(self, b: Batch) -> dict[str, Tensor]:
        f_s, f_t = b.s["stages"][-1], b.t["stages"][-1]
        with torch.no_grad():
            factor_t, _ = self.paraphraser(f_t)
        factor_s, factor_t = match_spatial(self.translator(f_s), factor_t)
        return {"ft": ft_loss(factor_s, factor_t)}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        if self.stage == "paraphraser":
            f_t = b.t["stages"][-1]
            _, rebuilt = self.paraphraser(f_t)
            return {"reconstruction": F.mse_loss(rebuilt, f_t)}
        return super().terms(b)
