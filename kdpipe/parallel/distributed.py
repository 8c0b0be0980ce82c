"""Data parallelism through torch.distributed, launched by torchrun (or `kdpipe run --nproc N`,
which starts torch's elastic launcher).

Every rank holds the whole distiller, built from the same seed, and trains on its shard of
each global batch (DistributedSampler's split of one shared permutation). After backward the
gradients of all trainable parameters are averaged across ranks in one flattened all-reduce,
and buffers (BatchNorm statistics) are broadcast from rank 0 at every epoch end, so every rank
holds the same model. One flat all-reduce per step (instead of wrapping the distiller in
DistributedDataParallel) lets methods that run their own updates (DML's peers in turn, the
adversarial discriminator) synchronize the same way. gloo on CPU, NCCL on CUDA (with gloo
beside it for the small CPU tensors of metrics and flags). Only rank 0 writes files and draws
progress.
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
    if not dist.is_initialized():
        # On CUDA, NCCL carries the gradients and gloo the CPU tensors (metrics, flags):
        # NCCL alone refuses a CPU tensor.
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


# What torchrun sets beside WORLD_SIZE, and init_process_group("env://") reads.
LAUNCHER_VARS = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def current() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), torchrun.local_rank())
    return Dist()


def check_batch(role: str, batch: int, world: int | None = None) -> None:
    """Each process takes batch // world images of a global batch: fewer than one is no split."""
    world = current().world if world is None else world
    if batch < world:
        raise ConfigError(
            f"the {role} batch size {batch} is smaller than the {world} processes "
            "training together",
            f"--batch-size is the global batch, split between the processes: give at least "
            f"{world} (a multiple of {world} splits it exactly), or start fewer processes",
        )


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average .grad over ranks, one all-reduce for all of them. Which parameters have a
    gradient is decided by the graph, the same on every rank, so None stays None."""
    d = current()
    if not d.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= d.world
    _unflatten_into(flat, grads)


def broadcast_state(state: Mapping[str, Any]) -> None:
    """Rank 0's values of a state_dict's tensors (a module's parameters and buffers) to every
    rank, in place, as DDP does when it wraps a model. Ranks that build a model from the same
    seed hold the same weights only where every machine's kernels draw the same numbers (an
    initializer's vectorized path can differ by CPU), and a difference would last the whole
    run, as averaged gradients keep it. One broadcast per device and dtype."""
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
    """Copy consecutive slices of `flat` into `tensors` (the order they were flattened in)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order, with gradients flowing back to the rank
    that owns each row. Backward sums every rank's gradient of the whole (one all_reduce,
    which gloo and NCCL both have; torch.distributed.nn's gather, deprecated, needs
    all-to-all on gloo) and keeps this rank's slice."""

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
    """Every rank's `rows` (same count on each: training steps are equal-sized) in rank order,
    differentiable, and where this rank's own rows start. One process: (rows, 0). For losses
    that compare each sample with the whole global batch (CRD's in-batch negatives; RKD, SP,
    CC and PKT through `Distiller.whole_batch`), so a run on N processes computes what one
    process computes over the same global batch."""
    d = current()
    if not d.active:
        return rows, 0
    return _GatherRows.apply(rows), d.rank * rows.shape[0]


def share_of(n: int) -> tuple[int, int, int]:
    """This rank's contiguous share of n rows: (rows per rank, first, end); the last ranks'
    shares may be short or empty."""
    d = current()
    share = -(-n // d.world)
    return share, min(d.rank * share, n), min((d.rank + 1) * share, n)


def gather_shares(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's share of n rows (`share_of`; this rank's is `rows`), in rank order: all n
    rows, on every rank. One all_gather (shares padded to equal length)."""
    d = current()
    if not d.active:
        return rows
    share, lo, hi = share_of(n)
    padded = rows.new_zeros((share, *rows.shape[1:]))
    padded[: hi - lo] = rows
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat(parts)[:n].contiguous()


def sum_over_ranks(value: int) -> int:
    """A whole number summed over ranks (exact: float64 holds integers to 2**53)."""
    d = current()
    if not d.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return int(t.item())


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank."""
    if not current().active:
        return
    for b in module.buffers():
        dist.broadcast(b, 0)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    d = current()
    if not d.active or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / d.world for k, v in zip(keys, t, strict=True)}


def max_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max of a small CPU tensor over ranks (gloo)."""
    if current().active:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_agree(flag: bool) -> bool:
    """True when `flag` holds on every rank (each rank may have its own disk)."""
    if not current().active:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def rank_0_says(flag: bool) -> bool:
    """Rank 0's `flag`, on every rank."""
    return bool(broadcast_from_0(torch.tensor([int(flag)])).item())


def broadcast_from_0(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` (a CPU tensor of the same shape and dtype on every rank), in place."""
    if current().active:
        dist.broadcast(t, 0)
    return t


PROBE_PREFIX = ".kdpipe-shared-"
_HOST_BYTES = 64


def ranks_not_seeing(out: Path) -> list[tuple[int, str]]:
    """The ranks (with their hosts) that do not see a file rank 0 has just created in `out`:
    on several machines `out` must be one shared directory, else ranks would resume from
    different checkpoints or disagree on which stages are done, and hang in the next
    collective. Rank 0 creates a file of a fresh random name (a stale one of the same name
    cannot exist on another disk), every rank looks for it, rank 0 removes it. CPU tensors
    only: gloo carries them beside NCCL."""
    d = current()
    if not d.active:
        return []
    token = torch.zeros(16, dtype=torch.uint8)
    if d.main:
        for stale in out.glob(f"{PROBE_PREFIX}*.tmp"):  # left by a run killed here
            stale.unlink(missing_ok=True)
        name = secrets.token_bytes(16)
        try:
            (out / f"{PROBE_PREFIX}{name.hex()}.tmp").touch()
            token = torch.frombuffer(bytearray(name), dtype=torch.uint8)
        except OSError:  # no probe, no verdict: the zero token tells every rank to skip it
            pass
    dist.broadcast(token, 0)
    if not token.any():
        return []
    probe = out / f"{PROBE_PREFIX}{bytes(token.tolist()).hex()}.tmp"
    seen = gather_records(bytes([probe.exists()]) + host_field())
    if d.main:
        probe.unlink(missing_ok=True)
    return [(r, host_of(rec[1:])) for r, rec in enumerate(seen) if not rec[0]]


FAILURE_TEXT = 400  # bytes of a failure's message, and of its hint, carried to rank 0


def raise_first_failure(error: KdpipeError | None) -> None:
    """Every rank learns whether any rank failed its checks, and all raise the first failing
    rank's error (its message, naming that rank and machine, its hint and exit code). A rank
    whose machine lacks a file the others have would otherwise end alone, leaving the others
    waiting in their next collective (on another machine, for torch's 30-minute timeout), and
    rank 0's log saying nothing of why. One process: `error` itself."""
    if not current().active:
        if error is not None:
            raise error
        return
    message, hint = (error.message, error.hint) if error else ("", "")
    seen = gather_records(
        bytes([error is not None, error.exit_code if error else 0])
        + text_field(message, FAILURE_TEXT)
        + text_field(hint, FAILURE_TEXT)
        + host_field()
    )
    failed = [(r, rec) for r, rec in enumerate(seen) if rec[0]]
    if not failed:
        return
    rank, rec = failed[0]
    text = rec[2 : 2 + FAILURE_TEXT], rec[2 + FAILURE_TEXT : 2 + 2 * FAILURE_TEXT]
    message, hint = (text_of(t) for t in text)
    if rank != 0:
        message = f"rank {rank} on {host_of(rec[2 + 2 * FAILURE_TEXT :])}: {message}"
    verdict = KdpipeError(message, hint)
    verdict.exit_code, verdict.agreed_from = rec[1], rank
    raise verdict from error


def host_field() -> bytes:
    """This machine's name as a fixed-width field of a gathered record (see host_of)."""
    return text_field(socket.gethostname(), _HOST_BYTES)


def host_of(field: bytes) -> str:
    return text_of(field[:_HOST_BYTES])


def text_field(text: str, width: int) -> bytes:
    """`text` as UTF-8 in exactly `width` bytes (cut, or padded with NULs)."""
    return text.encode()[:width].ljust(width, b"\0")


def text_of(field: bytes) -> str:
    """The text of a `text_field` (a cut character read as a replacement mark)."""
    return field.rstrip(b"\0").decode(errors="replace")


def gather_records(record: bytes) -> list[bytes]:
    """Every rank's `record`, in rank order (a record is as long on every rank). Plain bytes
    through gloo: nothing another process sends is unpickled."""
    mine = torch.frombuffer(bytearray(record), dtype=torch.uint8)
    seen = [torch.empty_like(mine) for _ in range(current().world)]
    dist.all_gather(seen, mine)
    return [t.numpy().tobytes() for t in seen]


def barrier() -> None:
    if current().active:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
