"""Two gloo ranks on this machine for the tests that train data-parallel on the CPU."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kdpipe.core.runs import set_writer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Far above any rank test's own time (the longest takes ~20 s): only a hang reaches it.
LIMIT_S = 300.0


def two_ranks(worker: Callable[..., None], *args: object) -> None:
    """`worker(rank, 2, port, *args)` in two processes forked from this one, joined.

    Forked, they start with torch and kdpipe imported, as DataLoader's workers do; spawned,
    each spent 4-10 s importing them again (the suite's 12 launches, over a minute). Each
    rank sets its own threads, environment and process group; `kdpipe run --nproc` itself
    (fresh processes under torch's launcher) is tested end to end in tests/e2e.

    A fork copies only the forking thread: had another thread of pytest's process held a lock
    at that moment, a rank could wait on it forever. Past LIMIT_S both ranks are killed and the
    test fails, instead of the suite hanging until CI's limit."""
    ctx = mp.start_processes(
        worker, args=(2, free_port(), *args), nprocs=2, start_method="fork", join=False
    )
    deadline = time.monotonic() + LIMIT_S
    while not ctx.join(timeout=1.0):  # raises as soon as a rank fails
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
                proc.join()
            raise TimeoutError(f"the two ranks were still running after {LIMIT_S:.0f} s: hung")


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int, **env: str) -> Iterator[None]:
    """This forked process as rank `rank` of a gloo group for the block (one thread, `env`
    set, rank 0 the one that writes files), the group left at its end."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    set_writer(rank == 0)
    try:
        yield
    finally:
        dist.destroy_process_group()
