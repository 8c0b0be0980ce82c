"""`kdpipe run --nproc N`: the same command on N local processes, started by PyTorch's own
elastic launcher (torch.distributed.run, what `torchrun` runs) - never a home-made one.

    kdpipe run --nproc 2 ...   ==   torchrun --standalone --nproc-per-node 2 -m kdpipe run ...

For several machines call torchrun yourself (README: multi-node).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from kdpipe.core import torchrun
from kdpipe.core.errors import ConfigError
from kdpipe.core.runs import check_until, forced_stages, refuse_foreign_dir
from kdpipe.parallel.runlock import RunLock

LAUNCHER_OPTIONS = ("--nproc", "--max-restarts")  # the launcher's; workers never see them


def without_launcher_options(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCHER_OPTIONS:
            skip = True
            continue
        if arg.startswith(tuple(f"{o}=" for o in LAUNCHER_OPTIONS)):
            continue
        out.append(arg)
    return out


def check_devices(nproc: int, device: str) -> None:
    """`--nproc N` must fit this machine: one GPU per process (a process past the last GPU
    failed with "invalid device ordinal"), or on the CPU at most one process per core (each
    process holds its own models and data: 64 of them on 2 cores would exhaust the memory
    long before they sped anything up)."""
    import torch

    if device != "cpu" and torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if nproc > gpus:
            raise ConfigError(
                f"--nproc {nproc} processes but this machine has {gpus} GPU{'s' * (gpus > 1)}",
                f"give --nproc {gpus} or fewer (one GPU per process), or --device cpu",
            )
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if nproc > (cores or 1):
        raise ConfigError(
            f"--nproc {nproc} processes but this process may use {cores} CPU core(s)",
            f"give --nproc {cores} or fewer: each process holds its own models and data",
        )


def relaunch(nproc: int, argv: list[str], max_restarts: int = 0) -> int:
    """Run `kdpipe <argv>` (minus the launcher's options) on `nproc` processes; their exit
    status. After a failure (a process killed, out of memory, a lost peer) the launcher
    starts them all again up to `max_restarts` times, and each restart resumes from the last
    checkpoint the run wrote."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun gives each process 1 thread unless told (and says so on every run): on a CPU
    # that leaves all but N cores idle. Split the cores this process may use instead.
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        os.environ["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // nproc))
    # Restarted workers must not meet the first attempt's addresses in the rendezvous store the
    # launcher shares with them: they connected to dead peers ("Gloo connectFullMesh failed
    # ... Connection refused"; pytorch/pytorch#135712). A store of their own per attempt.
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # The launcher keeps per-attempt folders (error files) under a log directory it creates in
    # /tmp and never removes: one torchelastic_* tree per run. Ours goes when the run ends.
    with tempfile.TemporaryDirectory(prefix="kdpipe-launch-", ignore_cleanup_errors=True) as logs:
        args = get_args_parser().parse_args(
            [
                *("--standalone", "--nproc-per-node", str(nproc)),
                *("--max-restarts", str(max_restarts), "--log-dir", logs),
                *("-m", "kdpipe", *without_launcher_options(argv)),
            ]
        )
        try:
            run(args)
        except ChildFailedError as e:
            first = next(iter(e.failures.values()))
            return first.exitcode if first.exitcode > 0 else 1
        except SignalException as e:  # the launcher passed the signal on to its workers,
            return 128 + int(e.sigval)  # which stopped at a safe point and said so
    return 0


def die_with_launcher() -> None:
    """In a worker that torch's elastic launcher started (torchrun, `kdpipe run --nproc`): be
    killed when the launcher dies. The launcher starts each worker in a session of its own, so
    a launcher killed with SIGKILL (a cancelled CI job, the OOM killer) left its workers
    training on, orphaned, writing into the run directory — and holding its lock, so the rerun
    that should resume the run was refused until they finished. Linux only (prctl)."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the run just keeps the old behaviour
    if os.getppid() == 1:  # the launcher died before the request was made
        os._exit(1)


def check_before_torch(out: Path, force: Iterable[str], until: str) -> None:
    """What `kdpipe run` can refuse before importing torch (seconds): a bad --until or --force
    and, outside torchrun, a foreign or busy --out. Under torchrun rank 0 checks --out later
    while the others wait; each process here ties its life to its launcher's."""
    check_until(until)
    forced = bool(forced_stages(force))
    if torchrun.active():
        die_with_launcher()
        return
    refuse_foreign_dir(out, forced)
    if out.is_dir():  # a directory another run holds: refused at once too
        probe = RunLock(out)
        probe.acquire(warn=False)
        probe.release()


def refuse_restarts_alone(max_restarts: int) -> None:
    if max_restarts and not torchrun.active():
        raise ConfigError(
            "--max-restarts restarts the processes --nproc starts",
            "add --nproc N (N >= 2), or give torchrun its own --max-restarts",
        )
