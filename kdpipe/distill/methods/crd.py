"""Contrastive representation distillation.

Tian, Krishnan, Isola. "Contrastive Representation Distillation." ICLR 2020.

Both penultimate embeddings are projected to 128-d and L2-normalized. Each student embedding
must pick its own teacher embedding out of negatives, and each teacher embedding its student
one, at temperature 0.07 (an InfoNCE form of the paper's NCE bound):

    L = CE + kd * KD_T + beta * (nce(s -> t) + nce(t -> s)),   beta=0.8, kd=1, T=4

Negatives are the other samples of the batch plus a bounded FIFO queue of past embeddings
(`queue`, default 4096) instead of the paper's dataset-sized memory bank; the bank's
momentum (0.5) has no counterpart in a queue, whose entries are simply the latest.

Under torchrun each rank's anchors are compared with the embeddings of the whole global batch
(gathered, gradients flowing back to their own rank), and every rank queues the whole global
batch: the queues stay identical on all ranks (a checkpoint written by rank 0 resumes each of
them), and N processes compute what one process computes over the same global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.distill.base import Batch, Distiller, ce_loss
from kdpipe.distill.data_parallel import gather_rows
from kdpipe.distill.methods import register
from kdpipe.distill.methods.kd import kd_loss


def info_nce(
    anchor: Tensor, positive: Tensor, negatives: Tensor, tau: float, offset: int = 0
) -> Tensor:
    """-log softmax of the positive among [positive, in-batch others, queued negatives].
    `positive` may hold more rows than `anchor` (the global batch under torchrun): anchor i's
    positive is row `offset + i`, the other rows are negatives."""
    logits = torch.cat([anchor @ positive.t(), anchor @ negatives.t()], 1) / tau
    return F.cross_entropy(logits, offset + torch.arange(len(anchor), device=anchor.device))


class EmbeddingQueue(nn.Module):
    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.items = torch.zeros(0, dim)
        self.size = size

    # The queue grows until full, so it travels in checkpoints as extra state, not a buffer.
    def get_extra_state(self) -> dict:
        return {"items": self.items}

    def set_extra_state(self, state: dict) -> None:
        self.items = state["items"]

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self.items = fn(self.items)  # follow .to(device) like a buffer would
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def push(self, e: Tensor) -> None:
        self.items = torch.cat([e.detach(), self.items])[: self.size]


@register
class ContrastiveRD(Distiller):
    name = "crd"
    paper = "Tian, Krishnan, Isola 2020 - Contrastive Representation Distillation"
    defaults = {
        "beta": 0.8,
        "kd": 1.0,
        "T": 4.0,
        "ce": 1.0,
        "tau": 0.07,
        "dim": 128.0,
        "queue": 4096.0,
    }
    kinds = ("embedding",)
    weight_key = "beta"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        s_shapes, t_shapes = self.probe_shapes()
        dim = int(self.params["dim"])
        self.embed_s = nn.Linear(s_shapes["embedding"][0][1], dim)
        self.embed_t = nn.Linear(t_shapes["embedding"][0][1], dim)
        self.queue_s = EmbeddingQueue(int(self.params["queue"]), dim)
        self.queue_t = EmbeddingQueue(int(self.params["queue"]), dim)

    def loss(self, b: Batch) -> dict[str, Tensor]:
        s = F.normalize(self.embed_s(b.s["embedding"][0]), dim=1)
        t = F.normalize(self.embed_t(b.t["embedding"][0]), dim=1)
        tau = self.params["tau"]
        all_s, all_t, at = s, t, 0
        if self.training:  # never gathered in evaluation, which one rank may do alone
            (all_s, at), (all_t, _) = gather_rows(s), gather_rows(t)
        loss = info_nce(s, all_t, self.queue_t.items, tau, at)
        loss = loss + info_nce(t, all_s, self.queue_s.items, tau, at)
        if self.training:
            self.queue_s.push(all_s)
            self.queue_t.push(all_t)
        return {"crd": loss}

    def terms(self, b: Batch) -> dict[str, Tensor]:
        assert b.z_t is not None
        out = super().terms(b)
        out["ce"] = self.params["ce"] * ce_loss(b.z_s, b.labels)
        if self.params["kd"]:
            out["kd"] = self.params["kd"] * kd_loss(b.z_s, b.z_t, self.params["T"])
        return out
