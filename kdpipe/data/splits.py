"""What every dataset loader returns: three splits and the facts the model, export and report need."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset

from kdpipe.core.errors import DataError


@dataclass
class DataInfo:
    """Facts about the inputs that flow into the model head, the export metadata and the report."""

    name: str
    class_names: list[str]
    input_size: tuple[int, int, int]  # C, H, W
    mean: list[float]
    std: list[float]
    sizes: dict[str, int] = field(default_factory=dict)
    layout: str = "NCHW"
    preprocessing: str = ""
    # How an image file becomes the model input (the bundle and `kdpipe predict` follow it):
    # read as `color` ("rgb" or "gray", gray copied to 3 channels), resize to H x W with
    # `resize` ("pil_bilinear": PIL's antialiased bilinear, as torchvision on PIL images;
    # "bilinear": torch.nn.functional.interpolate, align_corners=False), multiply by
    # `scale`, then (x - mean) / std per channel. With `center_crop` (a fraction) the resize
    # keeps the aspect, the shorter side to floor(H / fraction), and the central H x W is cut.
    color: str = "rgb"
    resize: str = "pil_bilinear"
    scale: float = 1 / 255
    center_crop: float | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["num_classes"] = self.num_classes
        d["input_size"] = list(self.input_size)
        return d


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    test: Dataset
    info: DataInfo
    # True when a sample always maps to the same tensor (no random augmentation), so teacher
    # outputs may be computed once and reused.
    deterministic: bool = True
    # True when samples are tensors in memory (digits): loading one is an index, so
    # DataLoader worker processes would cost more than they save.
    in_memory: bool = False


def stratified_indices(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Split range(len(labels)) into len(fractions)+1 stratified parts: the rest, then each fraction.

    Falls back to an unstratified split when a class is too small to appear in every part.
    """
    idx = np.arange(len(labels))
    rest, rest_labels = idx, labels
    parts: list[np.ndarray] = []
    remaining = 1.0
    for frac in fractions:
        share = frac / remaining
        counts = np.bincount(rest_labels)
        strat = rest_labels if counts[counts > 0].min() >= 2 else None
        try:
            rest, part = train_test_split(rest, test_size=share, stratify=strat, random_state=seed)
        except ValueError:
            rest, part = train_test_split(rest, test_size=share, random_state=seed)
        rest_labels = labels[rest]
        parts.append(np.sort(part))
        remaining -= frac
    return [np.sort(rest), *parts]


def check_labels(labels: np.ndarray, name: str) -> None:
    """A dataset must have samples of at least two classes to train a classifier."""
    if len(labels) == 0:
        raise DataError(f"dataset {name} has no images", "put images in class sub-folders")
    if len(np.unique(labels)) < 2:
        raise DataError(
            f"dataset {name} has a single class",
            "a classifier needs at least two classes: add another class folder",
        )
