"""Knowledge projection.

Zhang, Ning, He (knowledge projection for deep neural networks), 2017.

A learned 1x1-conv projection P maps a teacher layer's features into the student's feature
space at an injection layer:

    L = CE + lambda_t * mean((P(f_t) - f_s)^2),    lambda_t decays linearly from lambda to 0

The route (which teacher stage feeds which student stage) is chosen as in the paper by trying
candidate pairs: for the first `route_steps` steps every candidate (teacher stage i, student
stage j, |i - j| <= 1) has its own projection and all are trained together; the pair with the
lowest normalized projection error (MSE / variance of f_s, so layers of different scale
compare) is kept and the others are dropped from the loss. The chosen route is logged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.distill.base import Batch, Distiller, ce_loss, match_spatial
from kdpipe.distill.methods import register


def projection_loss(projected_t: Tensor, f_s: Tensor) -> Tensor:
    p, s = match_spatial(projected_t, f_s)
    return F.mse_loss(s, p)


@register
class KnowledgeProjection(Distiller):
    name = "projection"
    paper = "Zhang, Ning, He 2017 - Knowledge Projection for Deep Neural Networks"
    stages_doc = "route trial -> train"
    defaults = {"lam": 1.0, "route_steps": 50.0, "ce": 1.0}
    kinds = ("stages",)

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        s_shapes, t_shapes = self.probe_shapes()
        n = len(s_shapes["stages"])
        self.routes = [(i, j) for i in range(n) for j in range(n) if abs(i - j) <= 1]
        self.projections = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(t_shapes["stages"][i][1], s_shapes["stages"][j][1], 1, bias=False),
                nn.BatchNorm2d(s_shapes["stages"][j][1]),
            )
            for i, j in self.routes
        )
        self.errors: Tensor
        self.register_buffer("errors", torch.zeros(len(self.routes)))
        self.steps = 0
        self.chosen: int | None = None

    def get_extra_state(self) -> dict:
        return {"steps": self.steps, "chosen": -1 if self.chosen is None else self.chosen}

    def set_extra_state(self, state: dict) -> None:
        self.steps = int(state["steps"])
        self.chosen = None if state["chosen"] < 0 else int(state["chosen"])
        if self.chosen is not None:
            i, j = self.routes[self.chosen]
            self.route = f"teacher stage {i} -> student stage {j}"

    def _route_loss(self, k: int, b: Batch) -> tuple[Tensor, Tensor]:
        i, j = self.routes[k]
        f_s = b.s["stages"][j]
        mse = projection_loss(self.projections[k](b.t["stages"][i]), f_s)
        return mse, mse.detach() / (f_s.detach().var() + 1e-8)

    def loss(self, b: Batch) -> dict[str, Tensor]:
        if self.chosen is not None:
            return {"projection": self._route_loss(self.chosen, b)[0]}
        total: Tensor | float = 0.0
        for k in range(len(self.routes)):
            mse, normalized = self._route_loss(k, b)
            total = total + mse / len(self.routes)
            if self.training:
                self.errors[k] += normalized
        if self.training:
            self.steps += 1
            if self.steps >= self.params["route_steps"]:
                self.chosen = int(self.errors.argmin())
                i, j = self.routes[self.chosen]
                self.logged["route"] = float(self.chosen)
                self.route = f"teacher stage {i} -> student stage {j}"
        return {"projection": total}  # type: ignore[dict-item]

    def terms(self, b: Batch) -> dict[str, Tensor]:
        lam = self.params["lam"] * (1.0 - self.progress)
        out = {"projection": lam * self.loss(b)["projection"]}
        out["ce"] = self.params["ce"] * ce_loss(b.z_s, b.labels)
        return out

    def finish(self, val: torch.utils.data.Dataset) -> dict:
        return {"route": getattr(self, "route", "not chosen (fewer steps than route_steps)")}
