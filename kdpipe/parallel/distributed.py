"""Data parallelism through torch.distributed, launched by torchrun (or `kdpipe run --nproc N`).

Every rank holds the whole distiller and trains on its share of each global batch. Gradients
are averaged in one flat all-reduce per step rather than by wrapping the distiller in
DistributedDataParallel, so that methods running their own updates (DML's peers in turn, the
adversarial discriminator) synchronize the same way; buffers are broadcast from rank 0 at
every epoch end. gloo on CPU, NCCL on CUDA with gloo beside it for small CPU values. The
processes of one job trust each other: small Python values travel as objects.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from kdpipe.core import torchrun
from kdpipe.core.errors import ConfigError, KdpipeError

LAUNCHER_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")  # what init_process_group reads
PROBE_PREFIX = ".kdpipe-shared-"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment (a no-op without one)."""
    world = torchrun.world_size()
    if world <= 1:
        return Dist()
    missing = [v for v in LAUNCHER_VARS if v not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(
            f"WORLD_SIZE={world} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not: this process was not started by torchrun",
            "start it with `torchrun --nproc-per-node N -m kdpipe run ...` or `kdpipe run "
            "--nproc N`, or unset WORLD_SIZE",
        )
    if not dist.is_initialized():  # NCCL alone refuses a CPU tensor
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return current()


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), torchrun.local_rank())
    return Dist()


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
    """Rank 0's values of a state_dict's tensors to every rank, in place, as DDP does when it
    wraps a model: one seed builds the same weights only where every machine's kernels draw
    the same numbers, and averaged gradients would keep a difference all run."""
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


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank."""
    if current().active:
        for b in module.buffers():
            dist.broadcast(b, 0)


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
    """Every rank's `rows` (as many on each) in rank order, differentiable, and where this
    rank's own start: for losses over the whole global batch (CRD's negatives; RKD, SP, CC
    and PKT through `Distiller.whole_batch`), as one process computes them."""
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


def max_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max of a small CPU tensor over ranks: the per-step checks (a stop, a NaN)."""
    if current().active:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order."""
    d = current()
    if not d.active:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def from_rank_0(obj: Any) -> Any:
    """Rank 0's `obj`, on every rank."""
    box = [obj]
    if current().active:
        dist.broadcast_object_list(box, 0)
    return box[0]


def tensor_from_rank_0(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` (a CPU tensor of the same shape and dtype on every rank), in place."""
    if current().active:
        dist.broadcast(t, 0)
    return t


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    everyone = gather_objects(values)
    return {k: sum(v[k] for v in everyone) / len(everyone) for k in values}


def ranks_not_seeing(out: Path) -> list[tuple[int, str]]:
    """The ranks (and hosts) that do not see a file rank 0 has just created in `out`: on
    several machines `out` must be one shared directory, else ranks would resume from
    different checkpoints and hang in the next collective. The file's name is fresh, so a
    stale one on another disk cannot answer for it."""
    if not current().active:
        return []
    name = ""
    if current().main:
        for stale in out.glob(f"{PROBE_PREFIX}*.tmp"):  # left by a run killed here
            stale.unlink(missing_ok=True)
        try:
            name = f"{PROBE_PREFIX}{secrets.token_hex(16)}.tmp"
            (out / name).touch()
        except OSError:  # no probe, no verdict: every rank skips the check
            name = ""
    probe = out / from_rank_0(name)
    if probe == out:
        return []
    seen = gather_objects((probe.exists(), socket.gethostname()))
    if current().main:
        probe.unlink(missing_ok=True)
    return [(r, host) for r, (found, host) in enumerate(seen) if not found]


def raise_first_failure(error: KdpipeError | None) -> None:
    """All ranks raise the first failing rank's error (its message naming that rank and host,
    its hint and exit code), or none: a rank whose machine lacks a file would otherwise end
    alone and leave the others waiting in their next collective. One process: `error`."""
    if not current().active:
        if error is not None:
            raise error
        return
    mine = (error.message, error.hint, error.exit_code) if error else None
    seen = gather_objects((mine, socket.gethostname()))
    failed = [(rank, found, host) for rank, (found, host) in enumerate(seen) if found is not None]
    if not failed:
        return
    rank, (message, hint, exit_code), host = failed[0]
    verdict = KdpipeError(f"rank {rank} on {host}: {message}" if rank else message, hint)
    verdict.exit_code, verdict.agreed_from = exit_code, rank
    raise verdict from error


def barrier() -> None:
    if current().active:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
