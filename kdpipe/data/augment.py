"""Random augmentation of training batches: a crop shifted within a padded border and a
horizontal flip, the recipe CIFAR distillation papers train with (RandomCrop(32, padding=4)
and RandomHorizontalFlip in RepDistiller and mdistiller); or a crop of random area and aspect
resized back to the image size, ImageNet's recipe (torchvision's RandomResizedCrop: 8-100 %
of the area by default (--crop-scale), aspect 3/4-4/3, bilinear).

It runs on whole batches on the training device, after loading, so image files are decoded
once per epoch as before and a GPU does the work; but a resized crop of an image file (or of a
CIFAR/MNIST image) is cut while loading, from the image at its own resolution, as torchvision
cuts it (`cropping` below, read by transforms.ResizeOrCrop): a small crop of a 500 x 375 photo
keeps the detail that resizing it to 224 first would lose. What each image gets is a pure
function of (seed, epoch, image index): a resumed run, and a run on any number of processes,
see the same images as one uninterrupted run. Validation, test, calibration and profiling
never augment.
With augmentation a sample no longer maps to one tensor, so the teacher-logit table is off
and the teacher runs on every batch (api/distill stage)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import roi_align

from kdpipe.core.config import Augment
from kdpipe.data.splits import DataInfo

AUGMENTS: tuple[str, ...] = get_args(Augment)  # "none" and the kinds, as config accepts them
RATIO = (3 / 4, 4 / 3)  # resized crops' aspect ratios (width / height), torchvision's
TRIES = 10  # resized crop: draws of area and aspect before falling back to a central crop


def seeded(*words: int) -> torch.Generator:
    """A generator for the draws of `words` (seed, epoch, ...): well mixed, so neighbouring
    seeds or epochs draw unrelated numbers."""
    state = np.random.SeedSequence(list(words)).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def resized_crop_boxes(
    g: torch.Generator, n: int, size: tuple[int, int], scale: tuple[float, float]
) -> Tensor:
    """(n, 4) crops (left, top, width, height) in whole pixels of an image of `size` (H, W),
    drawn as torchvision's RandomResizedCrop.get_params draws one, for n images at once: up to
    TRIES draws of an area (a fraction in `scale`) and a log-uniform aspect ratio; the first
    that fits places the crop uniformly; none fits: the central crop of the whole image with
    its aspect clamped to RATIO."""
    h, w = size
    area = torch.empty(n, TRIES).uniform_(*scale, generator=g) * (h * w)
    log_ratio = torch.empty(n, TRIES).uniform_(*np.log(RATIO).tolist(), generator=g)
    cw = torch.sqrt(area * log_ratio.exp()).round()
    ch = torch.sqrt(area / log_ratio.exp()).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.int().argmax(1, keepdim=True)  # the first try that fits (0 when none does)
    cw, ch = cw.gather(1, first)[:, 0], ch.gather(1, first)[:, 0]
    u = torch.rand(n, 2, generator=g)  # where a fitting crop goes
    left, top = (u[:, 0] * (w - cw + 1)).floor(), (u[:, 1] * (h - ch + 1)).floor()
    # the fallback: the whole image, cut to the nearest allowed aspect, centred
    fw = min(w, round(h * RATIO[1])) if w / h > RATIO[1] else w
    fh = min(h, round(w / RATIO[0])) if w / h < RATIO[0] else h
    none = ~fits.any(1)
    cw, ch = cw.masked_fill(none, fw), ch.masked_fill(none, fh)
    left = left.masked_fill(none, (w - fw) // 2)
    top = top.masked_fill(none, (h - fh) // 2)
    return torch.stack([left, top, cw, ch], 1).long()


@dataclass
class SampleDraw:
    """The training image being loaded, for its resized crop: set by the trainer around each
    sample it loads (`cropping`), read by the loaders' resize step (transforms.ResizeOrCrop),
    which records that it cut the crop (`cropped`) so the batch step does not cut another."""

    seed: int
    key: int  # the epoch (BatchAugment's key)
    index: int  # the image's index in the training set
    scale: tuple[float, float]
    cropped: bool = False

    def box(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(left, top, width, height) of the crop in an image of `size` (H, W)."""
        g = seeded(self.seed, self.key, self.index, 0x5243)
        left, top, w, h = resized_crop_boxes(g, 1, size, self.scale)[0].tolist()
        return left, top, w, h


# Set only while the trainer loads one training image: everywhere else (validation, test,
# calibration, profiling, the teacher-logit table) images are resized whole.
_loading: ContextVar[SampleDraw | None] = ContextVar("kdpipe_sample_draw", default=None)


@contextmanager
def cropping(draw: SampleDraw) -> Iterator[SampleDraw]:
    """Within: the image a dataset loads gets `draw`'s resized crop."""
    token = _loading.set(draw)
    try:
        yield draw
    finally:
        _loading.reset(token)


def current_draw() -> SampleDraw | None:
    return _loading.get()


class BatchAugment:
    """Augments batches of one training set of `n` images of `size` (H, W)."""

    def __init__(
        self,
        kind: str,
        n: int,
        size: tuple[int, int],
        fill: Sequence[float],
        seed: int,
        crop_scale: float = 0.08,
    ) -> None:
        if kind not in AUGMENTS or kind == "none":
            raise ValueError(f"augmentation {kind!r}: use one of {', '.join(AUGMENTS[1:])}")
        self.resized = kind.startswith("resized-crop")
        self.crop, self.flip = kind.startswith("crop"), kind.endswith("flip")
        # 4 pixels at 32 (the papers' padding), in proportion at other sizes
        self.pad = max(1, min(size) // 8)
        # the border is black: a pixel of 0 after the dataset's normalization
        self.fill = torch.tensor(list(fill), dtype=torch.float32)
        self.n, self.size, self.seed, self.scale = n, size, seed, (crop_scale, 1.0)
        self._drawn: tuple[int, Tensor, Tensor, Tensor] | None = None

    def draws(self, key: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
        """Per image of the epoch `key`: its flip (bool), its shifted crop's (top, left)
        corner in the padded image, 0..2*pad (pad, pad: the image as it was), and its resized
        crop (left, top, width, height; empty unless resized). Drawn on the CPU once per epoch
        and kept on `device`, so a step copies nothing to a GPU and never waits on it."""
        device = torch.device(device)
        if self._drawn is None or self._drawn[0] != key or self._drawn[1].device != device:
            g = seeded(self.seed, key, 0x4B44)
            flips = torch.rand(self.n, generator=g) < 0.5
            corners = torch.randint(0, 2 * self.pad + 1, (self.n, 2), generator=g)
            boxes = (
                resized_crop_boxes(g, self.n, self.size, self.scale)
                if self.resized
                else torch.empty(0, 4, dtype=torch.long)
            )
            self._drawn = (key, flips.to(device), corners.to(device), boxes.to(device))
        return self._drawn[1], self._drawn[2], self._drawn[3]

    @property
    def crops_while_loading(self) -> tuple[int, tuple[float, float]] | None:
        """(seed, scale) for the trainer's SampleDraws, when images are to be cut while
        loading (resized crops); None otherwise."""
        return (self.seed, self.scale) if self.resized else None

    def __call__(self, x: Tensor, idx: Tensor, key: int, cropped: Tensor | None = None) -> Tensor:
        """The batch `x` (N, C, H, W) of training images `idx` (on x's device), as epoch
        `key` sees them. `cropped` (bool per image, on the CPU): the images whose resized crop
        was cut while loading (SampleDraw); the rest (in-memory tensors, digits) are cut here."""
        flips, corners, boxes = self.draws(key, x.device)
        if self.crop:
            x = self._shifted(x, corners[idx])
        if self.resized and (cropped is None or not bool(cropped.all())):
            cut = self._resized(x, boxes[idx])
            if cropped is None or not bool(cropped.any()):
                x = cut
            else:
                done = cropped.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
                x = torch.where(done, x, cut)
        if self.flip:
            x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(-1), x)
        return x

    def _resized(self, x: Tensor, boxes: Tensor) -> Tensor:
        """Each image's crop enlarged back to the image's size, bilinear: output pixel
        centres spread evenly over the crop, interpolated between the image's pixels (those
        just outside the crop included, as a continuous image would be cut; torchvision's
        crop-then-resize repeats the crop's edge pixels instead). One roi_align over the
        batch: a crop is never larger than the image, so one sample per output pixel."""
        b, _, h, w = x.shape
        left, top, cw, ch = boxes.to(x.dtype).unbind(1)
        batch = torch.arange(b, device=x.device, dtype=x.dtype)
        rois = torch.stack([batch, left, top, left + cw, top + ch], 1)
        return roi_align(x.contiguous(), rois, (h, w), sampling_ratio=-1, aligned=True)

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


def for_training(
    kind: str, info: DataInfo, train: Dataset, seed: int, crop_scale: float = 0.08
) -> BatchAugment | None:
    """The augmentation `--augment KIND` asks for, over the training set `train`."""
    if kind == "none":
        return None
    black = [-m / s for m, s in zip(info.mean, info.std, strict=True)]
    size = (info.input_size[1], info.input_size[2])
    return BatchAugment(kind, len(train), size, black, seed, crop_scale)  # type: ignore[arg-type]
