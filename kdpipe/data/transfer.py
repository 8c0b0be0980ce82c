"""Training data for the student beyond the labeled set: partially labeled training sets and
transfer sets the teacher labels (Bucilua et al. 2006; Hinton et al. 2015).

Label -1 marks a sample without a ground-truth label: distillation terms use it, the
cross-entropy term skips it (`distill.base.ce_loss`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from kdpipe.core import ui
from kdpipe.core.errors import DataError, absent
from kdpipe.data.image_files import is_image_file, load_rgb, unreadable_files
from kdpipe.data.splits import DataInfo, stratified_indices
from kdpipe.data.transforms import eval_transform

UNLABELED = -1


def dataset_labels(ds: Dataset) -> np.ndarray:
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


class PartiallyLabeled(Dataset):
    """`base` with only a stratified `fraction` of its labels kept; the rest read -1."""

    def __init__(self, base: Dataset, fraction: float, seed: int) -> None:
        self.base = base
        self.labeled = np.ones(len(base), dtype=np.bool_)  # type: ignore[arg-type]
        if fraction < 1.0:
            _, keep = stratified_indices(dataset_labels(base), [fraction], seed)
            self.labeled[:] = False
            self.labeled[keep] = True

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.base[i]
        return x, int(y) if self.labeled[i] else UNLABELED


class MixedImages(Dataset):
    """`count` synthetic images, each a mixup or a cutmix of two training images. Image i is
    a fixed function of (seed, i), so teacher outputs for it can be cached like any image."""

    def __init__(self, base: Dataset, count: int, seed: int) -> None:
        self.base, self.count, self.seed = base, count, seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        a, b = torch.randint(len(self.base), (2,), generator=g).tolist()  # type: ignore[arg-type]
        xa, xb = self.base[a][0], self.base[b][0]
        lam = float(torch.rand((), generator=g))
        if i % 2 == 0:  # mixup
            return lam * xa + (1 - lam) * xb, UNLABELED
        h, w = xa.shape[1:]  # cutmix: paste a box of area (1 - lam) from b into a
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        top = int(torch.randint(h - ch + 1, (), generator=g))
        left = int(torch.randint(w - cw + 1, (), generator=g))
        out = xa.clone()
        out[:, top : top + ch, left : left + cw] = xb[:, top : top + ch, left : left + cw]
        return out, UNLABELED


class UnlabeledFolder(Dataset):
    """Every image file under `root` (any depth), preprocessed like the run's data."""

    def __init__(self, root: Path, info: DataInfo) -> None:
        if not root.is_dir():
            raise DataError(
                f"transfer folder {root} {absent(root, folder=True)}",
                "check the path after imagefolder:",
            )
        found = sorted(p for p in root.rglob("*") if is_image_file(p.name))
        verdicts = unreadable_files([str(p) for p in found])
        bad = {p: verdicts[str(p)] for p in found if str(p) in verdicts}
        self.files = [p for p in found if p not in bad]
        if not self.files:
            raise DataError(f"no images found under transfer folder {root}", "add .png/.jpg files")
        if bad:
            first, why = next(iter(bad.items()))
            ui.warn(
                f"skipped {len(bad)} transfer image(s) under {root} that cannot be decoded "
                f"(e.g. {first}: {why})"
            )
        _, h, _ = info.input_size
        self.transform = eval_transform(
            h, info.mean, info.std, grayscale=info.color == "gray", center_crop=info.center_crop
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.transform(load_rgb(str(self.files[i]))), UNLABELED


def check_transfer(transfer: str | None) -> Path | None:
    """Validate a --transfer spec early; the folder of imagefolder:PATH, else None."""
    if transfer is None or transfer == "mix":
        return None
    kind, _, path = transfer.partition(":")
    if kind != "imagefolder" or not path:
        raise DataError(
            f"unknown transfer set '{transfer}'",
            "use --transfer mix or --transfer imagefolder:PATH",
        )
    if not Path(path).is_dir():
        raise DataError(
            f"transfer folder {path} {absent(path, folder=True)}",
            "check the path after imagefolder:",
        )
    return Path(path)


def student_training_set(
    train: Dataset,
    info: DataInfo,
    label_fraction: float,
    transfer: str | None,
    size: int,
    seed: int,
) -> Dataset:
    """The student's training data: the labeled set (possibly with most labels hidden) plus
    the transfer set, if any."""
    parts: list[Dataset] = [PartiallyLabeled(train, label_fraction, seed)]
    if transfer == "mix":
        parts.append(MixedImages(train, size * len(train), seed))  # type: ignore[arg-type]
    elif transfer:
        folder = check_transfer(transfer)
        assert folder is not None
        parts.append(UnlabeledFolder(folder, info))
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)
