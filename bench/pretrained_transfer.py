"""Fine-tuning from weights trained for other classes, against training from scratch, on real
images this machine holds: scikit-learn's digits written as PNG files, digits 0-5 one task,
6-9 another.

    python bench/pretrained_transfer.py [--epochs 1,2,4] [--out DIR]

A resnet18 teacher is trained on 0-5 (6 classes) by `kdpipe run --until teacher`; its
model.pt is then the --teacher-weights of runs on 6-9 (4 classes) with --fine-tune-teacher:
kdpipe loads all but the classifier and trains from there (what `--teacher-weights torchvision`
does with ImageNet weights).
The same runs from scratch, same recipe and epochs, beside them. Prints test top-1 of each.
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from kdpipe import api
from kdpipe.core import ui
from kdpipe.core.config import build_config


def write_pngs(root: Path, digits: range) -> None:
    data = load_digits()
    for image, label in zip(data.images, data.target, strict=True):
        if label in digits:
            folder = root / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.round(image * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{len(os.listdir(folder))}.png")


def teacher(
    work: Path, name: str, data: Path, epochs: int, weights: Path | None, lr: float = 3e-3
) -> dict:
    # build_config, as the CLI: a section given in part keeps the teacher recipe's defaults
    cfg = build_config(
        {},
        {
            "out": str(work / name),
            "data.spec": f"imagefolder:{data}",
            "data.image_size": 32,
            "teacher.arch": "resnet18",
            "teacher.weights": str(weights) if weights else None,
            "teacher.fine_tune": weights is not None,
            "teacher.train.epochs": epochs,
            "teacher.train.lr": lr,
            "teacher.fine_tune_lr": lr,
        },
    )
    api.run(cfg, until="teacher")
    return json.loads((work / name / "teacher" / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="1,2,4", help="teacher epochs on the second task")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--lr", default="3e-3", help="teacher learning rates on the second task")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="kdpipe-transfer-"))
    os.environ.setdefault("KDPIPE_CACHE", str(work / "cache"))
    ui.set_quiet(True)
    write_pngs(work / "first", range(0, 6))
    write_pngs(work / "second", range(6, 10))
    source = teacher(work, "source", work / "first", 8, None)
    weights = work / "source" / "teacher" / "model.pt"
    print(
        f"source teacher (digits 0-5, 8 epochs): test top-1 {100 * source['test_accuracy']:.2f} %"
    )
    print("| epochs on digits 6-9 | lr | from scratch | fine-tuned from the 0-5 teacher |")
    print("|---|---|---|---|")
    for epochs in (int(e) for e in args.epochs.split(",")):
        for lr in (float(v) for v in args.lr.split(",")):
            tag = f"{epochs}-{lr:g}"
            scratch = teacher(work, f"scratch{tag}", work / "second", epochs, None, lr)
            tuned = teacher(work, f"tuned{tag}", work / "second", epochs, weights, lr)
            assert scratch["source"] == "trained" and tuned["source"] == "fine-tuned"
            print(
                f"| {epochs} | {lr:g} | {100 * scratch['test_accuracy']:.2f} % "
                f"| {100 * tuned['test_accuracy']:.2f} % |"
            )


if __name__ == "__main__":
    main()
