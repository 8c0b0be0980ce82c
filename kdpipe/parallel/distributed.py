"""The processes of a torchrun job: joining the process group (gloo; NCCL beside it on CUDA)
and agreeing on small values, as Python objects: the processes of one job trust each other.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

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


def ranks_not_seeing(out: Path) -> list[tuple[int, str]]:
    """The (rank, host) that do not see a file rank 0 creates in `out`: on several machines
    `out` must be one shared directory, or ranks resume from other places."""
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
    """All ranks raise the first failing rank's error, or none: a rank failing alone would
    leave the others waiting in their next collective."""
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
