"""Deep mutual learning.

Zhang, Xiang, Hospedales, Lu. "Deep Mutual Learning." CVPR 2018.

K peer students learn together, no fixed teacher needed (`teacher_peer=1` lets the trained
teacher join as a frozen peer):

    L_k = CE(y, z_k) + 1/(K-1) * sum_{l != k} KL(p_l || p_k),   T=1, peers' outputs detached

sequential=1 (the paper's Algorithm 1): each batch, peers are updated in turn and the others'
outputs are recomputed after each update. sequential=0: one forward of all peers, every peer
updated from the same outputs (the common simplification). The peers are the student
(`--student`) followed by `--peers`; after training the peer with the best validation accuracy
is exported (or the one given by `export_peer`, an index into that list).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe import models
from kdpipe.core.config import DistillConfig
from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.methods import register
from kdpipe.distill.trainer import val_accuracy


def dml_loss(z_k: Tensor, others: list[Tensor], labels: Tensor) -> Tensor:
    """CE on the labels plus the mean KL(p_l || p_k) over the other (detached) peers."""
    log_p = F.log_softmax(z_k, 1)
    kl = sum(F.kl_div(log_p, F.softmax(z.detach(), 1), reduction="batchmean") for z in others)
    return ce_loss(z_k, labels) + kl / max(len(others), 1)  # type: ignore[operator]


@register
class DeepMutualLearning(Distiller):
    name = "dml"
    paper = "Zhang et al. 2018 - Deep Mutual Learning"
    stages_doc = "peers train together (sequential or simultaneous)"
    defaults = {"sequential": 1.0, "teacher_peer": 0.0, "export_peer": -1.0}
    needs_teacher = False
    uses_peers = True
    composable = False

    @classmethod
    def built_with(cls, d: DistillConfig, student_arch: str, num_classes: int) -> dict:
        return {
            "peers": [models.create(a, num_classes) for a in d.peers],
            "peer_names": [student_arch, *d.peers],
        }

    @classmethod
    def takes_teacher(cls, params: Mapping[str, float]) -> bool:
        return bool(params.get("teacher_peer", cls.defaults["teacher_peer"]))

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        peers=(),
        peer_names=(),
        **kwargs,
    ) -> None:  # type: ignore[no-untyped-def]
        super().__init__(student, teacher, **kwargs)
        self.peers = nn.ModuleList([student, *peers])
        self.peer_names = list(peer_names) or [f"peer{i}" for i in range(len(self.peers))]
        if len(self.peers) + int(self.params["teacher_peer"]) < 2:
            raise ConfigError(
                "deep mutual learning needs at least two peers",
                "add --peers ARCH[,ARCH...] (or --set teacher_peer=1 with a teacher)",
            )
        if self.params["teacher_peer"] and teacher is None:
            raise ConfigError("teacher_peer=1 needs a teacher", "pass --teacher NAME")
        self.chosen = 0

    def _fixed(self, images: Tensor, teacher_logits: Tensor | None) -> list[Tensor]:
        if not self.params["teacher_peer"]:
            return []
        if teacher_logits is None:
            teacher_logits = self.teacher_logits(images)
        return [teacher_logits]

    def forward(
        self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        outs = [p(images) for p in self.peers]
        fixed = self._fixed(images, teacher_logits)
        terms = {}
        for k, z in enumerate(outs):
            others = [o for i, o in enumerate(outs) if i != k] + fixed
            terms[f"peer{k}"] = dml_loss(z, others, labels)
        return outs[self.chosen], terms

    def loss(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        return {"dml": dml_loss(b.z_s, [b.z_t], b.labels)}

    def train_step(
        self,
        images: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None,
        opt: torch.optim.Optimizer,
    ) -> dict[str, Tensor]:
        if not self.params["sequential"]:
            return super().train_step(images, labels, teacher_logits, opt)
        fixed = self._fixed(images, teacher_logits)
        terms = {}
        for k, peer in enumerate(self.peers):
            with torch.no_grad(), self.stepper.autocast():
                others = [p(images) for i, p in enumerate(self.peers) if i != k]
            with self.stepper.autocast():
                loss = dml_loss(peer(images), others + fixed, labels)
            # only peer k has gradients, so only peer k moves
            self.stepper.update(loss, opt, {f"peer{k}": loss})
            terms[f"peer{k}"] = loss.detach()
        return terms

    def finish(self, val: torch.utils.data.Dataset) -> dict:

        accs = [val_accuracy(peer, val, workers=0) for peer in self.peers]
        pick = int(self.params["export_peer"])
        if not -1 <= pick < len(self.peers):
            raise ConfigError(
                f"export_peer={pick} but there are {len(self.peers)} peers",
                f"use -1 (best) or 0..{len(self.peers) - 1}",
            )
        self.chosen = accs.index(max(accs)) if pick < 0 else pick
        return {
            "peers": [
                {"arch": a, "val_accuracy": v} for a, v in zip(self.peer_names, accs, strict=True)
            ],
            "exported_peer": self.chosen,
            "exported_arch": self.peer_names[self.chosen],
        }

    def student(self) -> nn.Module:
        return self.peers[self.chosen]

    def students(self) -> list[nn.Module]:
        return list(self.peers)
