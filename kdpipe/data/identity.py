"""What the images of a dataset are, as a hash: the key under which outputs computed from them
(the teacher-logit table) may be stored and found again.

The hash covers the images only, never the labels (a teacher's outputs do not depend on them):
the pixels of in-memory tensors and arrays, and for files on disk each file's path, size and
modification time plus the transform that turns it into a tensor. Editing, adding, removing or
touching a file, changing the image size or the normalization all change it. A dataset built
of parts kdpipe does not know has no identity (None): its outputs are then never stored.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset

from kdpipe.data.transfer import MixedImages, PartiallyLabeled, UnlabeledFolder


def image_identity(ds: Dataset) -> str | None:
    """A hex digest naming the images of `ds` in order, or None when `ds` has parts of a kind
    this module cannot see into."""
    h = hashlib.sha256()
    return h.hexdigest() if _feed(h, ds) else None


def _feed(h: Any, ds: Any) -> bool:
    """Feed what defines the images of `ds` into `h`; False if something is unknown."""
    if isinstance(ds, PartiallyLabeled):  # hides labels only: the same images
        return _feed(h, ds.base)
    h.update(type(ds).__name__.encode())
    if isinstance(ds, Subset):
        _array(h, np.asarray(ds.indices, dtype=np.int64))
        return _feed(h, ds.dataset)
    if isinstance(ds, ConcatDataset):
        return all(_feed(h, part) for part in ds.datasets)
    if isinstance(ds, TensorDataset):
        hash_tensor(h, ds.tensors[0])
        return True
    if isinstance(ds, MixedImages):
        h.update(f"{ds.count}:{ds.seed}".encode())
        return _feed(h, ds.base)
    if isinstance(ds, UnlabeledFolder):
        _files(h, ds.files)
        h.update(describe_transform(ds.transform).encode())
        return True
    samples = getattr(ds, "samples", None)  # torchvision DatasetFolder / ImageFolder
    if isinstance(samples, list):
        _files(h, (s[0] for s in samples))
        h.update(describe_transform(getattr(ds, "transform", None)).encode())
        return True
    data = getattr(ds, "data", None)  # torchvision CIFAR (numpy) and MNIST (tensor) sets
    if isinstance(data, (np.ndarray, torch.Tensor)):
        hash_tensor(h, torch.as_tensor(data))
        h.update(describe_transform(getattr(ds, "transform", None)).encode())
        return True
    return False


def hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach().cpu()
    shape = tuple(t.shape)
    for dim, stride in enumerate(t.stride()):
        if stride == 0:  # a broadcast (expanded) dim holds one copy: hash that, not N of them
            t = t.narrow(dim, 0, min(1, t.shape[dim]))
    t = t.contiguous()
    h.update(f"{t.dtype}{shape}".encode())
    _array(h, t.reshape(-1).view(torch.uint8).numpy())


def _array(h: Any, a: np.ndarray) -> None:
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).data.cast("B"))


def _files(h: Any, paths: Iterable[str | Path]) -> None:
    for p in paths:
        st = os.stat(p)
        # fsencode: a file name that is not UTF-8 (Latin-1 from an old archive) comes back as
        # the bytes it is on disk; str.encode() refused it (an internal error).
        h.update(os.fsencode(os.path.abspath(p)))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())


def describe_transform(t: Any) -> str:
    """A stable text for a transform: torchvision's repr, with what Lambda hides (which
    function) spelled out and memory addresses removed."""
    if t is None:
        return "None"
    inner = getattr(t, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return f"{type(t).__name__}[{', '.join(describe_transform(s) for s in inner)}]"
    fn = getattr(t, "lambd", None)
    if callable(fn):
        return f"Lambda({getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))})"
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(t))
