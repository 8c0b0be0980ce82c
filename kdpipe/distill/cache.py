"""Teacher-output cache: with deterministic transforms a sample's teacher logits never change,
so they are computed once per sample and reused every epoch instead of running the teacher
each step (the teacher is usually the most expensive network in the loop).

The table is also kept on disk (`$KDPIPE_CACHE/teacher-logits/`), under a key made of what it
was computed from: the teacher's weights, the images (data.identity: pixels, or files with
their size and modification time, and the transforms), the device type and the torch and kdpipe
versions. Any later run of the same teacher over the same images (another student, another
method, a resumed run) reads it instead of running the teacher over the data again; a change to
any of those inputs is a different key, so a stale table is never used. Under torchrun each rank
computes its share of the rows and the shares are gathered, so every rank holds the whole table;
a table rank 0 reads from its cache is sent to every rank.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from kdpipe import __version__
from kdpipe.core import cache
from kdpipe.core.runs import load_torch, save_torch
from kdpipe.data.identity import hash_tensor, image_identity
from kdpipe.distill import data_parallel
from kdpipe.distill.stepper import autocast_to
from kdpipe.parallel import distributed
from kdpipe.runtimes.accuracy import in_order


@torch.inference_mode()
def teacher_logits_table(
    teacher: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
    workers: int = 0,
) -> Tensor:
    """Teacher logits (fp32) for every sample, row i for dataset[i], computed in `dtype`
    (autocast; None = fp32), the images read by `workers` DataLoader processes (pinned for a
    GPU). Channels-last, as the training loop runs (measured on the CPU: resnet50 inference
    1.3-1.4x faster than contiguous)."""
    teacher.eval()
    device = next(teacher.parameters()).device
    teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    rows = []
    for x, _ in in_order(dataset, batch_size, workers, device):
        x = x.to(device, non_blocking=True)
        with autocast_to(device.type, dtype):
            z = teacher(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)
        rows.append(z.float())
    teacher.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return torch.cat(rows).clone()


@dataclass
class TeacherTable:
    logits: Tensor  # (len(dataset), classes), on the teacher's device
    source: str  # "computed" or "disk"
    seconds: float
    path: Path | None  # where it is kept on disk (None: the images have no identity)


def table_key(teacher: nn.Module, images: str, dtype: torch.dtype | None = None) -> str:
    """What the table depends on, hashed: the teacher's weights and kind, the images, and what
    could change the arithmetic (device type, precision, torch and kdpipe versions)."""
    h = hashlib.sha256()
    device = next(teacher.parameters()).device
    kind = f"{device.type}|{dtype or torch.float32}|{type(teacher).__name__}"
    h.update(f"{__version__}|{torch.__version__}|{kind}|{images}".encode())
    for name, t in teacher.state_dict().items():
        h.update(name.encode())
        hash_tensor(h, t)
    return h.hexdigest()[:32]


def teacher_outputs(
    teacher: nn.Module,
    dataset: Dataset,
    num_classes: int,
    dtype: torch.dtype | None = None,
    workers: int = 0,
) -> TeacherTable:
    """The teacher's logits for every sample of `dataset`, computed in `dtype` (None = fp32):
    read from the disk cache when a table of the same inputs is there, else computed (sharded
    over ranks, images read by `workers` processes) and stored."""
    start = time.perf_counter()
    main = distributed.current().main
    # Only rank 0 reads and stores tables: the others skip naming the images (a stat of
    # every file of an image folder) and hashing the teacher.
    images = image_identity(dataset) if main else None
    path = None
    if images:
        path = cache.entry("teacher-logits", f"{table_key(teacher, images, dtype)}.pt")
    n = len(dataset)  # type: ignore[arg-type]
    device = next(teacher.parameters()).device
    stored = _read(path, n, num_classes) if path is not None else None
    # Rank 0's cache decides for every rank and its table is sent to the others: their
    # machines' caches may lack it (rank 0 alone stores what a job computes), or key the same
    # images otherwise (a file's identity holds its modification time, which copying changes).
    if distributed.from_rank_0(stored is not None):
        mine = stored if stored is not None else torch.empty(n, num_classes)
        table = distributed.tensor_from_rank_0(mine)
        return TeacherTable(table.to(device), "disk", time.perf_counter() - start, path)
    table = _compute(teacher, dataset, num_classes, dtype, workers)
    if path is not None:  # rank 0 writes
        cache.keep(
            "distill: teacher-logit table",
            "compute it again",
            lambda: save_torch({"logits": table.cpu()}, path),
        )
    return TeacherTable(table, "computed", time.perf_counter() - start, path)


def _read(path: Path, n: int, k: int) -> Tensor | None:
    """The stored table if it is whole and fits (n rows of k finite float32 values), else None."""
    if not path.is_file():
        return None

    def read() -> Tensor:
        t = load_torch(path)["logits"]
        if not (
            isinstance(t, Tensor)
            and t.dtype == torch.float32
            and tuple(t.shape) == (n, k)
            and bool(torch.isfinite(t).all())
        ):
            raise ValueError("it does not fit this data")
        return t

    where = f"the teacher-logit table {path}"
    return cache.read_back("distill", where, "computing it again", read)


def _compute(
    teacher: nn.Module, dataset: Dataset, k: int, dtype: torch.dtype | None, workers: int
) -> Tensor:
    """The whole table; under torchrun each rank computes a contiguous share, then all gather."""
    if not distributed.current().active:
        return teacher_logits_table(teacher, dataset, dtype=dtype, workers=workers)
    n = len(dataset)  # type: ignore[arg-type]
    _, lo, hi = data_parallel.share_of(n)
    device = next(teacher.parameters()).device
    mine = torch.zeros(0, k, device=device)
    if hi > lo:
        share_rows = Subset(dataset, range(lo, hi))
        mine = teacher_logits_table(teacher, share_rows, dtype=dtype, workers=workers)
    return data_parallel.gather_shares(mine, n)
