"""Conditional adversarial knowledge distillation.

Xu, Hsu, Huang. "Training Shallow and Thin Networks for Acceleration via Knowledge
Distillation with Conditional Adversarial Networks." ICLR 2018 workshop (arXiv 2017).

A discriminator D (MLP on the logit vector concatenated with the one-hot label,
K+K -> 256 -> 256 -> 1, LeakyReLU) learns teacher logits = real, student logits = fake.
Each step alternates: one D update (its own Adam optimizer, lr `d_lr`), then the student's

    L = adv * BCE(D(z_s, y), real) + l1 * mean|z_s - z_t| + ce * CE

D belongs to the distiller and is never exported. Both losses are logged (`d_loss` and
`adv`) so a discriminator that overpowers the student shows in the log.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.distill.base import Batch, Distiller
from kdpipe.distill.methods import register
from kdpipe.distill.optimizers import fused


def discriminator(num_classes: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(2 * num_classes, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, hidden),
        nn.LeakyReLU(0.2),
        nn.Linear(hidden, 1),
    )


def d_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Discriminator loss: teacher logits are real (1), student logits fake (0)."""
    real = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
    fake = F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
    return real + fake


def generator_loss(d_fake: Tensor) -> Tensor:
    """The student's adversarial loss: make D call its logits real."""
    return F.binary_cross_entropy_with_logits(d_fake, torch.ones_like(d_fake))


@register
class AdversarialKD(Distiller):
    name = "adversarial"
    paper = "Xu, Hsu, Huang 2017 - conditional adversarial networks for knowledge distillation"
    defaults = {"adv": 1.0, "l1": 1.0, "ce": 1.0, "d_lr": 1e-4}

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        with torch.no_grad():
            k = self.student_model.eval()(torch.zeros(2, *self.input_shape)).shape[1]
        self.student_model.train()
        self.k = k
        self.discriminator = discriminator(k)
        self.d_optimizer = fused(
            torch.optim.Adam,
            self.discriminator.parameters(),
            lr=self.params["d_lr"],
            betas=(0.5, 0.999),
        )

    # The discriminator's optimizer state travels in checkpoints with the weights.
    def get_extra_state(self) -> dict:
        return {"d_optimizer": self.d_optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.d_optimizer.load_state_dict(state["d_optimizer"])

    def own_optimized(self) -> list[nn.Module]:
        return [self.discriminator]

    def _d(self, z: Tensor, y1h: Tensor) -> Tensor:
        return self.discriminator(torch.cat([z, y1h], 1))

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        y1h = F.one_hot(b.targets(), self.k).to(b.z_s.dtype)
        if self.training:  # the D step, on detached logits
            loss_d = d_loss(self._d(b.z_t.detach(), y1h), self._d(b.z_s.detach(), y1h))
            self.stepper.update(loss_d, self.d_optimizer, {"d_loss": loss_d})
            self.logged["d_loss"] = loss_d.detach()  # read later, without a GPU stall
        self.discriminator.requires_grad_(False)  # the student step must not move D
        adv = generator_loss(self._d(b.z_s, y1h))
        self.discriminator.requires_grad_(True)
        return {
            "adv": self.params["adv"] * adv,
            "l1": self.params["l1"] * (b.z_s - b.z_t).abs().mean(),
        }
