"""Image files on disk: `imagefolder:PATH` (class sub-folders); ImageNet builds on it (imagenet.py).

`imagefolder:PATH` takes either one folder of class sub-folders, split stratified into
train/val/test by the seed, or a folder holding `train/` and `val/` and/or `test/` splits.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset
from torchvision.datasets import ImageFolder

from kdpipe.core import ui
from kdpipe.core.errors import DataError, absent
from kdpipe.data.image_files import is_image_file, load_rgb, unreadable_files
from kdpipe.data.splits import DataInfo, DataSplits, check_labels, stratified_indices
from kdpipe.data.transforms import IMAGENET_MEAN, IMAGENET_STD, describe, eval_transform


def _drop_undecodable(ds: ImageFolder, path: Path, strict: bool) -> None:
    """Check every file decodes (image_files.unreadable: headers, checksums, whole files, pixel
    count); skip the bad ones with a count and a warning, or fail when `strict`."""
    bad = unreadable_files([file for file, _ in ds.samples])
    if not bad:
        return
    first, why = next(iter(bad.items()))
    if strict:
        raise DataError(
            f"{len(bad)} image(s) under {path} cannot be decoded, e.g. {first} ({why})",
            "remove or replace them, or drop --strict-data to skip them",
        )
    ui.warn(
        f"skipped {len(bad)} image(s) under {path} that cannot be decoded (e.g. {first}: {why}); "
        "--strict-data makes this an error"
    )
    _keep(ds, [s for s in ds.samples if s[0] not in bad])


def _keep(ds: ImageFolder, samples: list[tuple[str, int]]) -> None:
    ds.samples = ds.imgs = samples
    ds.targets = [t for _, t in samples]


def _file_id(file: str) -> object:
    """The file itself (device, inode), whatever path reaches it; a path that cannot be
    stat'ed stands for itself (the decode check names it)."""
    try:
        st = os.stat(file)
    except OSError:
        return file
    return (st.st_dev, st.st_ino)


def _drop_repeated(ds: ImageFolder, path: Path, held_out: set[object] | None = None) -> None:
    """Use each file once. ImageFolder follows symbolic links (class folders linked from
    elsewhere are common), and a link pointing back up the tree (`ln -s . again`) listed every
    image below it again at each level, to the kernel's 40-link limit: 12 images became 252,
    the same files in train and test. Files are told apart by inode (one stat each), so hard
    links count as one file too. `held_out`: the files of the val/test split folders, which
    training must not see either."""
    seen = set(held_out or ())
    kept = []
    for file, label in ds.samples:
        key = _file_id(file)
        if key not in seen:
            seen.add(key)
            kept.append((file, label))
    repeated = len(ds.samples) - len(kept)
    if repeated:
        where = "also in the val/test folders" if held_out else "reached more than once"
        ui.warn(
            f"{repeated} image file(s) under {path} are {where} (through links); "
            "each file is used once" + (", for evaluation" if held_out else "")
        )
        _keep(ds, kept)


class _LabelledFlat(ImageFolder):
    """Images side by side in one folder, their classes from a table (file stem -> class), as
    ImageNet's validation images come; the same class indices as the training folder's."""

    def __init__(self, root: str, labels: dict[str, str], classes: list[str], **kw: Any) -> None:
        self._labels, self._classes = labels, classes  # read by the two methods below
        super().__init__(root, **kw)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return self._classes, {c: i for i, c in enumerate(self._classes)}

    def make_dataset(  # type: ignore[override]
        self, directory: str | Path, class_to_idx: dict[str, int], **_: Any
    ) -> list[tuple[str, int]]:
        files = sorted(e.name for e in os.scandir(directory) if e.is_file())
        named = [(f, self._labels.get(f.rsplit(".", 1)[0])) for f in files if is_image_file(f)]
        unknown = sorted({c for _, c in named if c is not None and c not in class_to_idx})
        if unknown:
            raise DataError(
                f"images in {directory} are labelled {unknown[:3]}, not classes of train/",
                "use the validation table that belongs to this training set",
            )
        samples = [(os.path.join(directory, f), class_to_idx[c]) for f, c in named if c]
        if not samples:
            raise DataError(
                f"none of the images in {directory} has a row in the validation table",
                "use the validation table that belongs to these images",
            )
        if len(samples) < len(named):
            ui.warn(f"skipped {len(named) - len(samples)} image(s) in {directory} the table lacks")
        return samples


def _image_folder(
    path: Path,
    size: int,
    strict: bool = False,
    flat: tuple[dict, list] | None = None,
    center_crop: float | None = None,
) -> ImageFolder:
    """The images under `path`, a class per sub-folder; with `flat` (labels by file stem,
    class names), images side by side labelled by that table."""
    if not path.is_dir():
        raise DataError(
            f"image folder {path} {absent(path, folder=True)}",
            "point imagefolder:PATH at a folder with one sub-folder of images per class",
        )
    kw: dict[str, Any] = {
        "transform": eval_transform(size, IMAGENET_MEAN, IMAGENET_STD, center_crop=center_crop),
        "loader": load_rgb,
        "is_valid_file": is_image_file,
    }
    try:
        ds = _LabelledFlat(str(path), *flat, **kw) if flat else ImageFolder(str(path), **kw)
    except (FileNotFoundError, OSError) as e:
        raise DataError(
            f"no images found in {path}: {str(e).splitlines()[0]}",
            "put images (.png, .jpg, ...) in one sub-folder per class, e.g. PATH/cat/1.png",
        ) from None
    _check_class_names(ds.classes, path)
    _drop_repeated(ds, path)
    _drop_undecodable(ds, path, strict)
    return ds


def _check_class_names(classes: list[str], path: Path) -> None:
    """Class folder names become the labels: one per line in labels.txt, UTF-8 text in
    bundle.json and the reports. A line break or control character in one shifted every label
    after it in labels.txt; a name that is not UTF-8 (an old Latin-1 archive) could not be
    written at all, an internal error once everything had trained. Refused up front."""
    for name in classes:
        kinds = {unicodedata.category(c) for c in name}
        if "Cs" in kinds:  # os.fsdecode's stand-ins for bytes that are not UTF-8
            problem = "is not UTF-8"
        elif kinds & {"Cc", "Zl", "Zp"}:
            problem = "holds a line break or control character"
        else:
            continue
        raise DataError(
            f"class folder {name!r} in {path} {problem}, so it cannot be a label",
            "rename the folder (labels.txt keeps one class name per line, in UTF-8)",
        )


def load_imagefolder(
    root: Path,
    seed: int,
    size: int,
    val_fraction: float,
    test_fraction: float,
    name: str,
    strict: bool = False,
    val_labels: dict[str, str] | None = None,
    center_crop: float | None = None,
) -> DataSplits:
    """`val_labels`: val/ holds its images side by side, their classes by file stem.
    `center_crop`: see transforms.ResizeOrCrop."""
    split_dirs = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" in split_dirs and len(split_dirs) > 1:
        train_full = _image_folder(split_dirs["train"], size, strict, None, center_crop)
        flat = {"val": (val_labels, train_full.classes)} if val_labels else {}
        held = {
            s: _image_folder(p, size, strict, flat.get(s), center_crop)
            for s, p in split_dirs.items()
            if s != "train"
        }
        for split, ds in held.items():
            if ds.classes != train_full.classes:
                raise DataError(
                    f"{root}/{split} has classes {ds.classes[:5]}... unlike train's",
                    "every split folder must hold the same class sub-folders",
                )
        _drop_repeated(
            train_full,
            split_dirs["train"],
            {_file_id(f) for d in held.values() for f, _ in d.samples},
        )
        labels = np.asarray(train_full.targets)
        check_labels(labels, str(root))
        if "val" in held:
            train: Dataset = train_full
            val: Dataset = held["val"]
        else:
            train_idx, val_idx = stratified_indices(labels, [val_fraction], seed)
            train, val = (
                Subset(train_full, train_idx.tolist()),
                Subset(train_full, val_idx.tolist()),
            )
        test = held.get("test", held.get("val"))
        assert test is not None
        classes = train_full.classes
        sizes = {"train": len(train), "val": len(val), "test": len(test)}  # type: ignore[arg-type]
    else:
        full = _image_folder(root, size, strict, None, center_crop)
        labels = np.asarray(full.targets)
        check_labels(labels, str(root))
        tr, va, te = stratified_indices(labels, [val_fraction, test_fraction], seed)
        if min(len(tr), len(va), len(te)) == 0:
            raise DataError(
                f"dataset {root} has only {len(labels)} images, too few for train/val/test",
                "add images, or lower the split fractions",
            )
        train, val, test = (Subset(full, i.tolist()) for i in (tr, va, te))
        classes, sizes = full.classes, {"train": len(tr), "val": len(va), "test": len(te)}
    info = DataInfo(
        name=name,
        class_names=list(classes),
        input_size=(3, size, size),
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        sizes=sizes,
        preprocessing=describe(size, IMAGENET_MEAN, IMAGENET_STD, center_crop),
        center_crop=center_crop,
    )
    return DataSplits(train, val, test, info)
