"""Dataset loaders on real files the tests write: digits, image folders, MNIST idx, CIFAR pickles."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.config import DataConfig
from kdpipe.data import load_data
from kdpipe.errors import DataError


def test_digits_is_split_stratified_and_deterministic() -> None:
    a = load_data(DataConfig(), seed=0)
    b = load_data(DataConfig(), seed=0)
    c = load_data(DataConfig(), seed=1)
    assert a.info.sizes == {"train": 1257, "val": 180, "test": 360}
    assert a.info.num_classes == 10 and a.info.input_size == (3, 32, 32)
    x, y = a.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])
    counts = torch.bincount(a.test.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 360 / 10 classes, stratified
    train_x = a.train.tensors[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3


def _write_images(root: Path, classes: list[str], per_class: int, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 * k + 30, 10, (size, size + i % 3, 3)), 0, 255)
            mode = "L" if i % 4 == 0 else "RGB"  # mixed modes must all load as RGB
            img = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_imagefolder_single_folder(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", ["cat", "dog", "fox"], 20)
    d = load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'imgs'}", image_size=24), seed=0)
    assert d.info.class_names == ["cat", "dog", "fox"]
    assert sum(d.info.sizes.values()) == 60 and d.info.sizes["test"] == 12
    x, y = d.train[0]
    assert x.shape == (3, 24, 24)


def test_imagefolder_with_split_folders(tmp_path: Path) -> None:
    _write_images(tmp_path / "ds" / "train", ["a", "b"], 12)
    _write_images(tmp_path / "ds" / "test", ["a", "b"], 4)
    d = load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'ds'}", image_size=16), seed=0)
    assert d.info.sizes["test"] == 8 and d.info.sizes["train"] + d.info.sizes["val"] == 24


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'nope'}"), 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'empty'}"), 0)
    _write_images(tmp_path / "one", ["only"], 5)
    with pytest.raises(DataError, match="single class"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'one'}"), 0)


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + (3 if array.ndim == 3 else 1)
    path.write_bytes(
        struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    )


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_style_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8))
    d = load_data(DataConfig(spec=f"{name}:{tmp_path}"), seed=0)
    assert d.info.num_classes == 10 and d.info.sizes["test"] == 20
    assert d.info.sizes["train"] + d.info.sizes["val"] == 50
    x, y = d.test[3]
    assert x.shape == (3, 32, 32) and int(y) == 3


def test_cifar10_pickled_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The test writes its own small batches, so the md5 of the official files cannot match.
    import torchvision.datasets.cifar as cifar
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ]
    for name in names:
        batch = {
            "data": rng.integers(0, 255, (10, 3072), dtype=np.uint8),
            "labels": list(range(10)),
        }
        (root / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    d = load_data(DataConfig(spec=f"cifar10:{tmp_path}"), seed=0)
    assert d.info.class_names[0] == "class0" and d.info.sizes["test"] == 10
    assert d.test[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("spec", ["cifar10", "cifar100", "mnist", "fashion-mnist"])
def test_missing_files_say_where_to_put_them(tmp_path: Path, spec: str) -> None:
    with pytest.raises(DataError) as e:
        load_data(DataConfig(spec=f"{spec}:{tmp_path}"), 0)
    assert "never downloads" in e.value.hint and "ROOT/" in e.value.hint


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(DataError, match="unknown dataset") as e:
        load_data(DataConfig(spec="cifar"), 0)
    assert "cifar10" in e.value.hint
    with pytest.raises(DataError, match="needs a path"):
        load_data(DataConfig(spec="mnist"), 0)


def test_undecodable_images_are_skipped_with_a_warning_or_fail_when_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdpipe.errors import DataError

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((8, 8), i * 20, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    (tmp_path / "a" / "cut.png").write_bytes((tmp_path / "a" / "0.png").read_bytes()[:40])
    (tmp_path / "b" / "notes.jpg").write_bytes(b"not an image")
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8), seed=0)
    assert sum(splits.info.sizes.values()) == 20
    assert "skipped 2 image(s)" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(DataError, match="2 image\\(s\\) under .* cannot be decoded"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8, strict=True), seed=0)
