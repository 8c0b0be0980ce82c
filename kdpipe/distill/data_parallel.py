"""Data-parallel training: every rank holds the whole distiller and trains on its share of each
global batch. Gradients are averaged in one flat all-reduce per step, not by a DDP wrapper, so
methods with updates of their own (DML's peers, the adversarial discriminator) sync the same
way. Without a process group every call is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kdpipe.parallel.distributed import current


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average .grad over ranks in one all-reduce. Which parameters have a gradient is decided
    by the graph, the same on every rank, so None stays None."""
    d = current()
    grads = [p.grad for p in params if p.grad is not None]
    if d.active and grads:
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        _unflatten_into(flat / d.world, grads)


def broadcast_state(state: Mapping[str, Any]) -> None:
    """Rank 0's values of a state_dict's tensors to every rank, in place, as DDP does: one seed
    builds the same weights only where every machine's kernels draw the same numbers."""
    if not current().active:
        return
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in state.values():  # a state_dict's tensors share the module's storage
        if isinstance(t, torch.Tensor) and t.numel():
            groups.setdefault((t.device, t.dtype), []).append(t)
    for (_, dtype), tensors in groups.items():
        flat = torch.cat([t.reshape(-1) for t in tensors])
        wire = flat.to(torch.uint8) if dtype == torch.bool else flat  # gloo has no bool
        dist.broadcast(wire, 0)
        _unflatten_into(wire.to(dtype), tensors)


def _unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


class _GatherRows(torch.autograd.Function):
    """All ranks' rows in rank order; backward sums every rank's gradient of the whole (one
    all_reduce, which gloo has where it lacks all-to-all) and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        d = current()
        rows = rows.contiguous()  # feature maps may be channels-last; gathered dense
        parts = [torch.empty_like(rows) for _ in range(d.world)]
        dist.all_gather(parts, rows)
        ctx.rows, ctx.rank = rows.shape[0], d.rank
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's `rows` in rank order, differentiable, and where this rank's own start: for
    losses over the whole global batch (CRD's negatives, `Distiller.whole_batch`)."""
    d = current()
    return (_GatherRows.apply(rows), d.rank * rows.shape[0]) if d.active else (rows, 0)


def share_of(n: int) -> tuple[int, int, int]:
    """This rank's contiguous share of n rows: (rows per rank, first, end)."""
    d = current()
    share = -(-n // d.world)
    return share, min(d.rank * share, n), min((d.rank + 1) * share, n)


def gather_shares(rows: torch.Tensor, n: int) -> torch.Tensor:
    """All n rows on every rank, from each rank's `share_of` them (padded to equal length)."""
    d = current()
    if not d.active:
        return rows
    share, lo, hi = share_of(n)
    padded = rows.new_zeros((share, *rows.shape[1:]))
    padded[: hi - lo] = rows
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].contiguous()
