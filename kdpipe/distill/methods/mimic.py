"""Model compression on a transfer set.

Bucilua, Caruana, Niculescu-Mizil. "Model Compression." KDD 2006.

The teacher labels a transfer set (unlabeled images with `--transfer imagefolder:PATH`, or
mixup/cutmix images made from the training set with `--transfer mix`, plus the training
images themselves) and the student learns those labels only; ground-truth labels are unused.

    target=0  regress the teacher's logits:         mean((z_s - z_t)^2)        (default)
    target=1  match its probabilities at T:         T^2 * KL(p_t^T || p_s^T)
    target=2  hard pseudo-labels:                   CE(argmax z_t, z_s)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss
from kdpipe.distill.methods.logits import logit_mse

TARGETS = ("logits", "probabilities", "hard labels")


def mimic_loss(z_s: Tensor, z_t: Tensor, target: int = 0, T: float = 1.0) -> Tensor:
    if target == 0:
        return logit_mse(z_s, z_t)
    if target == 1:
        return kd_loss(z_s, z_t, T)
    return F.cross_entropy(z_s, z_t.argmax(1))


@register
class Mimic(Distiller):
    name = "mimic"
    paper = "Bucilua, Caruana, Niculescu-Mizil 2006 - Model Compression (transfer set)"
    defaults = {"target": 0.0, "T": 1.0, "weight": 1.0}
    weight_key = "weight"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.params["target"] not in (0, 1, 2):
            raise ConfigError(
                f"mimic target must be 0, 1 or 2, got {self.params['target']:g}",
                "0 = logits, 1 = probabilities at T, 2 = hard labels",
            )

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        return {"mimic": mimic_loss(b.z_s, b.z_t, int(self.params["target"]), self.params["T"])}
