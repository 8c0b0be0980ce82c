"""CIFAR-10/100, MNIST and Fashion-MNIST from local files through torchvision (never downloaded).

The official test split is the test split; validation is carved, stratified, from train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset
from torchvision import datasets

from kdpipe.core.errors import DataError
from kdpipe.data.splits import DataInfo, DataSplits, stratified_indices
from kdpipe.data.transforms import describe, eval_transform

# name: (torchvision class, mean, std, grayscale, where the files go under ROOT)
SETS = {
    "cifar10": (
        datasets.CIFAR10,
        [0.4914, 0.4822, 0.4465],
        [0.2470, 0.2435, 0.2616],
        False,
        "ROOT/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    ),
    "cifar100": (
        datasets.CIFAR100,
        [0.5071, 0.4865, 0.4409],
        [0.2673, 0.2564, 0.2762],
        False,
        "ROOT/cifar-100-python/ (train, test, meta)",
    ),
    "mnist": (
        datasets.MNIST,
        [0.1307] * 3,
        [0.3081] * 3,
        True,
        "ROOT/MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-...)",
    ),
    "fashion-mnist": (
        datasets.FashionMNIST,
        [0.2860] * 3,
        [0.3530] * 3,
        True,
        "ROOT/FashionMNIST/raw/ (train-images-idx3-ubyte, ..., t10k-labels-idx1-ubyte)",
    ),
}


def _labels(ds: Any) -> np.ndarray:
    targets = ds.targets
    return np.asarray(targets.numpy() if hasattr(targets, "numpy") else targets, dtype=np.int64)


def load(
    name: str,
    root: Path,
    seed: int,
    size: int,
    val_fraction: float,
    center_crop: float | None = None,
) -> DataSplits:
    cls, mean, std, gray, where = SETS[name]
    tf = eval_transform(size, mean, std, grayscale=gray, center_crop=center_crop)
    try:
        train_full = cls(str(root), train=True, transform=tf, download=False)
        test = cls(str(root), train=False, transform=tf, download=False)
    except RuntimeError as e:
        # CIFAR's batches are pickles: torchvision unpickles only files whose MD5 is the
        # official release's, so a file of any other content is refused here, unread.
        raise DataError(
            f"{name} files under {root} are missing or not the official ones "
            f"({str(e).splitlines()[0].split('.')[0]})",
            f"kdpipe never downloads: put the original files at {where} "
            "(any other copy: save its images in class folders, --data imagefolder:PATH)",
        ) from None
    labels = _labels(train_full)
    train_idx, val_idx = stratified_indices(labels, [val_fraction], seed)
    classes = [str(c) for c in train_full.classes]  # type: ignore[attr-defined]
    info = DataInfo(
        name=name,
        class_names=classes,
        input_size=(3, size, size),
        mean=mean,
        std=std,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test)},  # type: ignore[arg-type]
        preprocessing=("grayscale->RGB, " if gray else "") + describe(size, mean, std, center_crop),
        color="gray" if gray else "rgb",
        center_crop=center_crop,
    )
    return DataSplits(
        Subset(train_full, train_idx.tolist()), Subset(train_full, val_idx.tolist()), test, info
    )
