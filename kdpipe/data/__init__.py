"""Datasets by spec string: `digits` (embedded default), `imagefolder:PATH`, `imagenet:ROOT`,
`cifar10:ROOT`, `cifar100:ROOT`, `mnist:ROOT`, `fashion-mnist:ROOT`."""

from __future__ import annotations

from pathlib import Path

from kdpipe.core import ui
from kdpipe.core.config import DataConfig
from kdpipe.core.errors import DataError, did_you_mean
from kdpipe.data.splits import DataInfo, DataSplits

NEEDS_PATH = ("imagefolder", "imagenet", "cifar10", "cifar100", "mnist", "fashion-mnist")
KINDS = ("digits", *NEEDS_PATH)
DEFAULT_SIZE = {"imagefolder": 224, "imagenet": 224}

__all__ = ["DataInfo", "DataSplits", "KINDS", "load_data", "parse_spec"]


def parse_spec(spec: str) -> tuple[str, Path | None]:
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise DataError(
            f"unknown dataset '{spec}'",
            did_you_mean(kind, KINDS) or f"use one of: {', '.join(KINDS)} (with :PATH for files)",
        )
    if kind in NEEDS_PATH and not path:
        raise DataError(f"dataset '{kind}' needs a path", f"write it as {kind}:/path/to/data")
    if kind == "digits" and path:
        raise DataError("dataset 'digits' takes no path", "write --data digits")
    return kind, Path(path).expanduser() if path else None


def load_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Load the three splits named by `cfg.spec`, deterministic given `seed`."""
    splits = _load(cfg, seed)
    if cfg.crop_scale != DataConfig().crop_scale and not cfg.augment.startswith("resized"):
        ui.info(f"note: --crop-scale applies to resized crops (--augment {cfg.augment})")
    # random augmentation (applied by the trainer) gives a sample another tensor each epoch
    splits.deterministic = cfg.augment == "none"
    return splits


def _load(cfg: DataConfig, seed: int) -> DataSplits:
    kind, path = parse_spec(cfg.spec)
    size = cfg.image_size or DEFAULT_SIZE.get(kind, 32)
    crop = cfg.center_crop
    if kind == "digits":
        if crop is not None:
            raise DataError(
                "--center-crop applies to image files; digits are 8x8 arrays resized whole",
                "drop --center-crop (data.center_crop), or use an image dataset",
            )
        from kdpipe.data import digits

        return digits.load(seed, size, cfg.val_fraction, cfg.test_fraction)
    assert path is not None
    if not path.exists():
        raise DataError(f"data path {path} does not exist", f"check --data {kind}:PATH")
    if kind == "imagefolder":
        from kdpipe.data.folders import load_imagefolder

        splits = (cfg.val_fraction, cfg.test_fraction)
        return load_imagefolder(
            path, seed, size, *splits, "imagefolder", cfg.strict, center_crop=crop
        )
    if kind == "imagenet":
        from kdpipe.data.imagenet import load_imagenet

        return load_imagenet(path, seed, size, cfg.val_fraction, cfg.strict, crop)
    from kdpipe.data import torchvision_sets

    return torchvision_sets.load(kind, path, seed, size, cfg.val_fraction, crop)
