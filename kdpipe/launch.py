"""`kdpipe run --nproc N`: the same command on N local processes, started by PyTorch's own
elastic launcher (torch.distributed.run, what `torchrun` runs) - never a home-made one.

    kdpipe run --nproc 2 ...   ==   torchrun --standalone --nproc-per-node 2 -m kdpipe run ...

For several machines call torchrun yourself (README: multi-node).
"""

from __future__ import annotations

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def relaunch(nproc: int, argv: list[str]) -> int:
    """Run `kdpipe <argv>` (minus --nproc) on `nproc` processes; their exit status."""
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", "--nproc-per-node", str(nproc), "-m", "kdpipe", *without_nproc(argv)]
    )
    try:
        run(args)
    except ChildFailedError as e:
        first = next(iter(e.failures.values()))
        return first.exitcode if first.exitcode > 0 else 1
    return 0
