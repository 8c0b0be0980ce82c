"""`imagenet:ROOT`: ImageNet's train/ in class folders (one per wnid) and val/ in class folders
or as ImageNet ships it, 50 000 images side by side, labelled from one of the two tables the
downloads come with:

- Kaggle's `LOC_val_solution.csv` (ImageId, PredictionString whose first word is the wnid),
  kept beside `ILSVRC/` — ROOT is then `.../ILSVRC/Data/CLS-LOC`;
- image-net.org's devkit, `ILSVRC2012_devkit_t12.tar.gz` (or its extracted folder):
  `data/ILSVRC2012_validation_ground_truth.txt` gives each image's ILSVRC2012_ID in file
  order, `data/meta.mat` the wnid of each ID.

Either is looked for in ROOT and up to three folders above it. Nothing is moved or written.
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path

from kdpipe.core.errors import DataError
from kdpipe.data.folders import load_imagefolder
from kdpipe.data.splits import DataSplits

SOLUTION = "LOC_val_solution.csv"
DEVKIT = "ILSVRC2012_devkit_t12"
TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
META = "data/meta.mat"


def load_imagenet(
    root: Path,
    seed: int,
    size: int,
    val_fraction: float,
    strict: bool = False,
    center_crop: float | None = None,
) -> DataSplits:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"ImageNet folder {root / split} not found",
                "lay ImageNet out as ROOT/train/<class>/*.JPEG and ROOT/val/<class>/*.JPEG",
            )
    # With train/ and val/ present the test fraction is unused: val is the held-out split.
    return load_imagefolder(
        root, seed, size, val_fraction, 0.1, "imagenet", strict, flat_val_labels(root), center_crop
    )


def flat_val_labels(root: Path) -> dict[str, str] | None:
    """The wnid of each of val/'s images by file stem when val/ has no class folders, else None."""
    val = root / "val"
    with os.scandir(val) as entries:
        if any(e.is_dir() for e in entries):
            return None
    for folder in (root, *root.parents[:3]):
        if (folder / SOLUTION).is_file():
            return _kaggle_solution(folder / SOLUTION)
        for devkit in (folder / f"{DEVKIT}.tar.gz", folder / DEVKIT):
            if devkit.exists():
                return _devkit_labels(devkit)
    raise DataError(
        f"ImageNet's {val} holds images without class folders, and neither {SOLUTION} nor "
        f"{DEVKIT}(.tar.gz) was found in {root} or the 3 folders above it",
        f"put Kaggle's {SOLUTION} or image-net.org's {DEVKIT}.tar.gz in {root}, "
        "or sort val/ into val/<wnid>/ folders",
    )


def _kaggle_solution(table: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    try:
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):  # ImageId, PredictionString ("wnid x0 y0 x1 y1 ...")
                labels[row["ImageId"]] = row["PredictionString"].split()[0]
    except (KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError, csv.Error):
        raise DataError(
            f"{table} is not ImageNet's validation solution",
            "it must have the columns ImageId,PredictionString (the first word: the wnid)",
        ) from None
    return labels


def _devkit_labels(devkit: Path) -> dict[str, str]:
    """ILSVRC2012_val_00000001 ... from the ground truth's IDs (in file order) and meta.mat."""
    from scipy.io import loadmat  # scikit-learn's dependency: always installed with kdpipe

    try:
        truth, meta = (_devkit_file(devkit, name) for name in (TRUTH, META))
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if s["num_children"] == 0}
        ids = [int(line) for line in truth.decode("ascii").split()]
        return {f"ILSVRC2012_val_{n:08d}": wnid[i] for n, i in enumerate(ids, start=1)}
    except (OSError, KeyError, ValueError, TypeError, IndexError, tarfile.TarError) as e:
        raise DataError(
            f"{devkit} is not ImageNet's 2012 devkit ({type(e).__name__}: {e})"[:300],
            f"use image-net.org's {DEVKIT}.tar.gz as downloaded, or Kaggle's {SOLUTION}",
        ) from None


def _devkit_file(devkit: Path, name: str) -> bytes:
    if devkit.is_dir():
        return (devkit / name).read_bytes()
    with tarfile.open(devkit) as tar:  # read in memory: nothing is extracted
        info = tar.getmember(f"{DEVKIT}/{name}")
        member = tar.extractfile(info)
        if member is None or info.size > 64 << 20:  # the real files: 2.5 MB and 340 KB
            raise ValueError(f"{name} is not a file of a plausible size")
        return member.read()
