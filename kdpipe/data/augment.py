"""Random augmentation of training batches: a crop shifted within a padded border and a
horizontal flip, the recipe CIFAR distillation papers train with (RandomCrop(32, padding=4)
and RandomHorizontalFlip in RepDistiller and mdistiller).

It runs on whole batches on the training device, after loading, so image files are decoded
once per epoch as before and a GPU does the work. What each image gets is a pure function of
(seed, epoch, image index): a resumed run, and a run on any number of processes, see the same
images as one uninterrupted run. Validation, test, calibration and profiling never augment.
With augmentation a sample no longer maps to one tensor, so the teacher-logit table is off
and the teacher runs on every batch (api/distill stage)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from kdpipe.config import Augment
from kdpipe.data.splits import DataInfo

AUGMENTS: tuple[str, ...] = get_args(Augment)  # "none" and the kinds, as config accepts them


class BatchAugment:
    """Augments batches of one training set of `n` images of `size` (H, W)."""

    def __init__(
        self, kind: str, n: int, size: tuple[int, int], fill: Sequence[float], seed: int
    ) -> None:
        if kind not in AUGMENTS or kind == "none":
            raise ValueError(f"augmentation {kind!r}: use one of {', '.join(AUGMENTS[1:])}")
        self.crop, self.flip = "crop" in kind, "flip" in kind
        # 4 pixels at 32 (the papers' padding), in proportion at other sizes
        self.pad = max(1, min(size) // 8)
        # the border is black: a pixel of 0 after the dataset's normalization
        self.fill = torch.tensor(list(fill), dtype=torch.float32)
        self.n, self.seed = n, seed
        self._drawn: tuple[int, Tensor, Tensor] | None = None

    def draws(self, key: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Per image of the epoch `key`: its flip (bool) and its crop's (top, left) corner in
        the padded image, 0..2*pad (pad, pad: the image as it was). Drawn on the CPU once per
        epoch and kept on `device`, so a step copies nothing to a GPU and never waits on it."""
        device = torch.device(device)
        if self._drawn is None or self._drawn[0] != key or self._drawn[1].device != device:
            state = np.random.SeedSequence([self.seed, key, 0x4B44]).generate_state(2)
            g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            flips = torch.rand(self.n, generator=g) < 0.5
            corners = torch.randint(0, 2 * self.pad + 1, (self.n, 2), generator=g)
            self._drawn = (key, flips.to(device), corners.to(device))
        return self._drawn[1], self._drawn[2]

    def __call__(self, x: Tensor, idx: Tensor, key: int) -> Tensor:
        """The batch `x` (N, C, H, W) of training images `idx` (on x's device), as epoch
        `key` sees them."""
        flips, corners = (t[idx] for t in self.draws(key, x.device))
        if self.crop:
            x = self._shifted(x, corners)
        if self.flip:
            x = torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def _shifted(self, x: Tensor, corners: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.pad
        fill = self.fill.to(x.device, x.dtype)
        fill = fill if fill.numel() == c else fill[:1].expand(c)
        padded = fill.view(1, c, 1, 1).expand(b, c, h + 2 * p, w + 2 * p).clone()
        padded[..., p : p + h, p : p + w] = x
        # one gather: image i's window starts at corners[i]
        rows = corners[:, 0, None] + torch.arange(h, device=x.device)  # (b, h)
        cols = corners[:, 1, None] + torch.arange(w, device=x.device)  # (b, w)
        batch = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        chan = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return padded[batch, chan, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]


def for_training(kind: str, info: DataInfo, train: Dataset, seed: int) -> BatchAugment | None:
    """The augmentation `--augment KIND` asks for, over the training set `train`."""
    if kind == "none":
        return None
    black = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
    size = (info.input_size[1], info.input_size[2])
    return BatchAugment(kind, len(train), size, black, seed)  # type: ignore[arg-type]
