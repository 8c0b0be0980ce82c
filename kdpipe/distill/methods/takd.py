"""Teacher-assistant knowledge distillation.

Mirzadeh, Farajtabar, Li, Levine, Matsukawa, Ghasemzadeh. "Improved Knowledge Distillation via
Teacher Assistant." AAAI 2020.

A chain teacher -> assistant(s) -> student, each link plain KD:

    L = (1 - lambda) * CE + lambda * T^2 * KL(p_teacher^T || p_student^T)

`kdpipe run --method takd --assistant resnet34 [--assistant ...]` trains every link in order in
one run; each trained assistant is cached by fingerprint, so a rerun only redoes changed links.
"""

from __future__ import annotations

from torch import Tensor

from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss


@register
class TeacherAssistant(Distiller):
    name = "takd"
    paper = "Mirzadeh et al. 2020 - Improved Knowledge Distillation via Teacher Assistant"
    stages_doc = "teacher -> assistant(s) -> student, KD per link"
    defaults = {"T": 4.0, "lam": 0.9}
    uses_assistants = True

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        return {"kd": kd_loss(b.z_s, b.z_t, self.params["T"])}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        lam = self.params["lam"]
        return {"kd": lam * self.loss(b)["kd"], "ce": (1 - lam) * ce_loss(b.z_s, b.labels)}
