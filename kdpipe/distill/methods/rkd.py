"""Relational knowledge distillation.

Park, Kim, Lu, Cho. "Relational Knowledge Distillation." CVPR 2019.

On the penultimate embeddings (any widths):
  distance  psi_D = ||e_i - e_j|| / mean of the batch's pairwise distances
  angle     psi_A = cos of the angle at e_j in every triplet (e_i, e_j, e_k)
    L = CE + 25 * smooth_l1(psi_D_s, psi_D_t) + 50 * smooth_l1(psi_A_s, psi_A_t)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register


def normalized_distances(e: Tensor) -> Tensor:
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def angles(e: Tensor) -> Tensor:
    """cos of angle(e_i - e_j, e_k - e_j) for all i, j, k: [B, B, B] flattened."""
    v = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # v[j, i] = e_i - e_j
    return torch.bmm(v, v.transpose(1, 2)).flatten()


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    return F.smooth_l1_loss(normalized_distances(e_s), normalized_distances(e_t))


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    return F.smooth_l1_loss(angles(e_s), angles(e_t))


@register
class RelationalKD(Distiller):
    name = "rkd"
    paper = "Park et al. 2019 - Relational Knowledge Distillation"
    defaults = {"distance": 25.0, "angle": 50.0, "ce": 1.0}
    kinds = ("embedding",)

    def loss(self, b: Batch) -> dict[str, Tensor]:
        e_s, e_t = (self.whole_batch(x["embedding"][0]) for x in (b.s, b.t))
        return {
            "rkd_distance": self.params["distance"] * rkd_distance_loss(e_s, e_t),
            "rkd_angle": self.params["angle"] * rkd_angle_loss(e_s, e_t),
        }
