"""The embedded default dataset: scikit-learn's 1,797 handwritten digits, as 3x32x32 images.

The 8x8 grayscale digits (values 0..16) are scaled to [0, 1], resized bilinearly to the
image size, copied to three channels (so every ImageNet architecture takes them unchanged),
and normalized with the training split's mean and std. Everything lives in memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import Subset, TensorDataset

from kdpipe.data.splits import DataInfo, DataSplits, stratified_indices


def load(seed: int, image_size: int, val_fraction: float, test_fraction: float) -> DataSplits:
    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    images = F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False
    )
    labels = digits.target.astype(np.int64)
    train_idx, val_idx, test_idx = stratified_indices(labels, [val_fraction, test_fraction], seed)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    # One channel in memory, seen as three (a stride-0 view; batches are stacked copies), and
    # the splits index it: the three-channel copy and one copy per split took 7x the memory
    # (--image-size 1024: 45 GB, the machine's OOM killer instead of a run).
    images.sub_(mean).div_(std)
    rgb = TensorDataset(images.expand(-1, 3, -1, -1), torch.from_numpy(labels))

    def subset(idx: np.ndarray) -> Subset:
        return Subset(rgb, idx.tolist())

    info = DataInfo(
        name="digits",
        class_names=[str(c) for c in digits.target_names],
        input_size=(3, image_size, image_size),
        mean=[mean] * 3,
        std=[std] * 3,
        sizes={"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        color="gray",
        resize="bilinear",
        preprocessing=(
            f"8x8 grayscale/16 -> bilinear {image_size}x{image_size} -> 3 channels -> (x-mean)/std"
        ),
    )
    return DataSplits(subset(train_idx), subset(val_idx), subset(test_idx), info, in_memory=True)
