"""Dataset loaders on real files the tests write: digits, image folders, MNIST idx, CIFAR pickles."""

from __future__ import annotations

import os
import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdpipe.core.config import DataConfig
from kdpipe.core.errors import DataError
from kdpipe.data import load_data
from tests.e2e.helpers import stacked


def test_digits_is_split_stratified_and_deterministic() -> None:
    a = load_data(DataConfig(), seed=0)
    b = load_data(DataConfig(), seed=0)
    c = load_data(DataConfig(), seed=1)
    assert a.info.sizes == {"train": 1257, "val": 180, "test": 360}
    assert a.info.num_classes == 10 and a.info.input_size == (3, 32, 32)
    x, y = a.test[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(stacked(a.test)[0], stacked(b.test)[0])
    assert not torch.equal(stacked(a.test)[1], stacked(c.test)[1])
    counts = torch.bincount(stacked(a.test)[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 360 / 10 classes, stratified
    train_x = stacked(a.train)[0]
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1) < 1e-3
    # One grey channel kept once, seen as three: no per-split or per-channel copies.
    assert (
        x.stride()[0] == 0
        and x.untyped_storage().data_ptr() == a.train[0][0].untyped_storage().data_ptr()
    )


def _write_images(root: Path, classes: list[str], per_class: int, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 * k + 30, 10, (size, size + i % 3, 3)), 0, 255)
            mode = "L" if i % 4 == 0 else "RGB"  # mixed modes must all load as RGB
            img = Image.fromarray(pixels.astype(np.uint8)).convert(mode)
            img.save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def _two_classes(root: Path, per_class: int, step: int = 20, stem: bytes = b"") -> None:
    """Class folders a/ and b/ of `per_class` grey 8x8 PNGs, file i of value i * step, named
    `stem` + i (bytes: a name need not be UTF-8)."""
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            name = os.fsdecode(bytes(root / c) + b"/" + stem + b"%d.png" % i)
            Image.fromarray(np.full((8, 8), i * step, dtype=np.uint8)).save(name)


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


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what unpickling the batch would execute
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("spec", "folder"), [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_a_malicious_cifar_pickle_is_refused_unread(tmp_path: Path, spec: str, folder: str) -> None:
    """CIFAR's files are pickles: one that is not the official release is never unpickled."""
    marker = tmp_path / "pwned"
    root = tmp_path / folder
    root.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta", "train", "test", "meta"):  # fmt: skip
        (root / name).write_bytes(pickle.dumps({"data": _Payload(marker), "labels": [0]}))
    with pytest.raises(DataError) as e:
        load_data(DataConfig(spec=f"{spec}:{tmp_path}"), 0)
    assert "missing or not the official ones" in e.value.message
    assert not marker.exists()
    pickle.loads((root / "test_batch").read_bytes())  # the payload is live: unpickling runs it
    assert marker.exists()


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
    from kdpipe.core.errors import DataError

    _two_classes(tmp_path, 10)
    (tmp_path / "a" / "cut.png").write_bytes((tmp_path / "a" / "0.png").read_bytes()[:40])
    (tmp_path / "b" / "notes.jpg").write_bytes(b"not an image")
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8), seed=0)
    assert sum(splits.info.sizes.values()) == 20
    assert "skipped 2 image(s)" in capsys.readouterr().err.replace("\n", " ")
    with pytest.raises(DataError, match="2 image\\(s\\) under .* cannot be decoded"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8, strict=True), seed=0)


def test_a_named_pipe_among_the_images_is_skipped_not_waited_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # open() of a FIFO waits for a writer: a pipe named x.png held the run forever.
    _two_classes(tmp_path, 6)
    os.mkfifo(tmp_path / "a" / "pipe.png")

    def waited(*_: object) -> None:
        raise TimeoutError("waited on the pipe")  # fail, never hang the suite

    before = signal.signal(signal.SIGALRM, waited)
    signal.alarm(30)
    try:
        splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8), seed=0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    assert sum(splits.info.sizes.values()) == 12
    err = " ".join(capsys.readouterr().err.split())
    assert "skipped 1 image(s)" in err and "not a regular file" in err


def test_file_names_that_are_not_utf8_are_read_and_identified(tmp_path: Path) -> None:
    # Latin-1 names from an old archive: hashing the folder's identity (the teacher-logit
    # cache key) was an internal UnicodeEncodeError.
    from kdpipe.data.identity import image_identity

    _two_classes(tmp_path, 6, stem=b"caf\xe9")
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8), seed=0)
    assert sum(splits.info.sizes.values()) == 12
    first = image_identity(splits.train)
    assert first and first == image_identity(splits.train)
    os.utime(splits.train.dataset.samples[splits.train.indices[0]][0], ns=(0, 0))
    assert image_identity(splits.train) != first  # a file changed: another key


def test_a_folder_checked_once_is_not_opened_again_until_a_file_changes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A rerun (a resume, another student) opened every image again: ~1 min for ImageNet here.
    from kdpipe.data import image_files

    folder = tmp_path / "imgs"
    _two_classes(folder, 6)
    (folder / "a" / "notes.png").write_bytes(b"not an image")
    opened: list[str] = []
    check = image_files.unreadable
    monkeypatch.setattr(image_files, "unreadable", lambda f: opened.append(f) or check(f))
    spec = DataConfig(spec=f"imagefolder:{folder}", image_size=8)
    for expected_opens in (13, 0):  # checked, then known
        opened.clear()
        splits = load_data(spec, seed=0)
        assert len(opened) == expected_opens and sum(splits.info.sizes.values()) == 12
        err = " ".join(capsys.readouterr().err.split())
        assert "skipped 1 image(s)" in err and "notes.png" in err  # said on every run
    os.utime(folder / "b" / "3.png", ns=(0, 0))  # a file changed: the folder is checked again
    opened.clear()
    load_data(spec, seed=0)
    assert len(opened) == 13
    for stored in Path(os.environ["KDPIPE_CACHE"], "image-checks").glob("*.json"):
        stored.write_text("[not, verdicts")  # damaged since: checked again, not trusted
    opened.clear()
    load_data(spec, seed=0)
    assert len(opened) == 13


def test_every_torchrun_rank_keeps_its_image_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ranks other than 0 write no run files, and their verdicts went with them: with a cache
    # per machine, every other machine opened every image again on every run.
    from kdpipe.core.runs import set_writer
    from kdpipe.data import image_files

    folder = tmp_path / "imgs"
    _two_classes(folder, 6)
    opened: list[str] = []
    check = image_files.unreadable
    monkeypatch.setattr(image_files, "unreadable", lambda f: opened.append(f) or check(f))
    spec = DataConfig(spec=f"imagefolder:{folder}", image_size=8)
    set_writer(False)  # as on a rank other than 0
    try:
        for expected_opens in (12, 0):  # checked, then known, on that rank's machine too
            opened.clear()
            load_data(spec, seed=0)
            assert len(opened) == expected_opens
    finally:
        set_writer(True)


def test_files_cut_short_are_found_where_verify_reads_no_pixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PIL's verify() passes a JPEG, GIF, BMP or TIFF cut in half; such a file used to stop a
    # run with an internal error in the middle of training.
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            img.save(tmp_path / c / f"{i}.png")
    whole = {"jpg": img, "gif": img.convert("P"), "bmp": img, "tif": img}
    for ext, picture in whole.items():
        picture.save(tmp_path / "a" / f"whole.{ext}")
        data = (tmp_path / "a" / f"whole.{ext}").read_bytes()
        (tmp_path / "b" / f"cut.{ext}").write_bytes(data[: len(data) // 2])
    # Whole JPEGs with zero padding or data after the end marker are kept (decoded to be sure).
    jpeg = (tmp_path / "a" / "whole.jpg").read_bytes()
    (tmp_path / "a" / "padded.jpg").write_bytes(jpeg + b"\x00" * 100)
    (tmp_path / "a" / "trailer.jpg").write_bytes(jpeg + b"EXTRA-METADATA")
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=16), seed=0)
    assert sum(splits.info.sizes.values()) == 12 + 4 + 2
    assert "skipped 4 image(s)" in capsys.readouterr().err.replace("\n", " ")
    for split in (splits.train, splits.val, splits.test):
        for i in range(len(split)):  # every kept file really decodes
            assert split[i][0].shape == (3, 16, 16)


def test_sixteen_bit_greyscale_is_scaled_not_clipped_and_late_breakage_is_named(
    tmp_path: Path,
) -> None:
    from kdpipe.data.folders import load_rgb

    ramp = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    rgb = np.asarray(load_rgb(str(tmp_path / "deep.png")))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[..., 0].astype(float), ramp / 257, atol=1)  # PIL: 255s
    # `kdpipe predict` (torch-free) reads the same pixels as training, in colour and grey
    from kdpipe.predict import preprocess

    for color in ("rgb", "gray"):
        pre = {"resize": [8, 8], "color": color, "interpolation": "bilinear", "scale": 1.0}
        x = preprocess(tmp_path / "deep.png", {**pre, "mean": [0.0] * 3, "std": [1.0] * 3})
        np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1).astype(np.float32))
    (tmp_path / "gone.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # broken after the scan
    with pytest.raises(DataError, match="cannot decode image .*gone.png"):
        load_rgb(str(tmp_path / "gone.png"))


def test_floating_point_tiffs_in_zero_to_one_are_scaled_not_read_as_black(tmp_path: Path) -> None:
    from kdpipe.data.folders import load_rgb
    from kdpipe.predict import preprocess

    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)  # a scientific TIFF's range
    wide = unit * 300  # values beyond 1: read as 0..255, clipped, as Pillow reads them
    for name, values, expected in (("unit", unit, unit * 255), ("wide", wide, wide.clip(0, 255))):
        Image.fromarray(values, mode="F").save(tmp_path / f"{name}.tif")
        rgb = np.asarray(load_rgb(str(tmp_path / f"{name}.tif")))
        np.testing.assert_allclose(rgb[..., 1].astype(float), expected, atol=0.51)
        pre = {"resize": [8, 8], "color": "rgb", "interpolation": "bilinear", "scale": 1.0}
        x = preprocess(tmp_path / f"{name}.tif", {**pre, "mean": [0.0] * 3, "std": [1.0] * 3})
        np.testing.assert_array_equal(x, rgb.transpose(2, 0, 1).astype(np.float32))


def test_decompression_bombs_are_skipped_and_large_photos_read_without_warnings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A few hundred bytes of PNG can decode to gigabytes; Pillow refuses more than twice
    # MAX_IMAGE_PIXELS with its own Exception subclass, which stopped a run as an internal
    # error. Between the limit and twice it, Pillow only warns (from every worker, every epoch).
    import warnings

    from kdpipe.data.folders import load_rgb
    from kdpipe.predict import preprocess

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # bombs above 2000 pixels
    _two_classes(tmp_path, 6, step=30)
    Image.new("L", (50, 50)).save(tmp_path / "a" / "bomb.png")  # 2500 pixels
    Image.new("L", (40, 40), 200).save(tmp_path / "b" / "large.png")  # 1600: warned by Pillow
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning Pillow still emits fails the test
        splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8), seed=0)
        assert np.asarray(load_rgb(str(tmp_path / "b" / "large.png"))).shape == (40, 40, 3)
    assert sum(splits.info.sizes.values()) == 13
    err = " ".join(capsys.readouterr().err.split())  # undo rich's wrapping
    assert "skipped 1 image(s)" in err and "bomb.png: Image size (2500 pixels)" in err
    with pytest.raises(DataError, match=r"1 image\(s\) .*bomb.png \(Image size \(2500 pixels\)"):
        load_data(DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8, strict=True), seed=0)
    with pytest.raises(DataError, match="cannot decode image .*bomb.png"):
        load_rgb(str(tmp_path / "a" / "bomb.png"))
    pre = {"resize": [8, 8], "color": "rgb", "interpolation": "bilinear", "scale": 1.0}
    with pytest.raises(DataError, match="cannot read image .*bomb.png"):
        preprocess(tmp_path / "a" / "bomb.png", {**pre, "mean": [0.0] * 3, "std": [1.0] * 3})


def test_files_reached_through_symbolic_links_are_used_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A link back up the tree made ImageFolder list each image ~20 times, in every split.
    _two_classes(tmp_path / "one", 6, step=30)
    (tmp_path / "one" / "a" / "again").symlink_to(".")
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(tmp_path / "elsewhere" / "x.png")
    (tmp_path / "one" / "b" / "linked").symlink_to(tmp_path / "elsewhere")  # a real extra image
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'one'}", image_size=8), seed=0)
    assert sum(splits.info.sizes.values()) == 13
    assert "image file(s) under" in capsys.readouterr().err
    # Split folders: a test image linked into train is kept for the test only.
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / "two" / split / c).mkdir(parents=True)
            for i in range(4):
                img = Image.fromarray(np.full((8, 8), i * 9 + (split == "test"), dtype=np.uint8))
                img.save(tmp_path / "two" / split / c / f"{i}.png")
    (tmp_path / "two" / "train" / "a" / "leak.png").symlink_to(tmp_path / "two/test/a/0.png")
    os.link(tmp_path / "two/test/b/1.png", tmp_path / "two/train/b/hard.png")  # a hard link too
    splits = load_data(DataConfig(spec=f"imagefolder:{tmp_path / 'two'}", image_size=8), seed=0)
    assert splits.info.sizes["train"] + splits.info.sizes["val"] == 8
    assert splits.info.sizes["test"] == 8
    err = " ".join(capsys.readouterr().err.split())
    assert "2 image file(s) under" in err and "also in the val/test folders" in err


def test_transfer_folder_skips_files_cut_short_and_reads_any_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kdpipe.data.transfer import UnlabeledFolder

    rng = np.random.default_rng(0)
    (tmp_path / "deep" / "er").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.full((12, 12), 40000, dtype=np.uint16)).save(tmp_path / "deep" / "b.png")
    Image.fromarray(rng.integers(0, 255, (9, 9), dtype=np.uint8)).save(tmp_path / "deep/er/c.gif")
    jpeg = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "deep" / "er" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "notes.txt").write_text("not an image")
    info = load_data(DataConfig(), seed=0).info
    folder = UnlabeledFolder(tmp_path, info)
    assert [p.name for p in folder.files] == ["a.jpg", "b.png", "c.gif"]
    assert "skipped 1 transfer image(s)" in capsys.readouterr().err.replace("\n", " ")
    x, label = folder[1]
    assert label == -1 and x.shape == (3, 32, 32)
    # 40000/65535 of full scale, not clipped to white: digits normalize by their own mean/std.
    expected = (40000 / 257 / 255 - info.mean[0]) / info.std[0]
    assert abs(float(x.mean()) - expected) < 0.05


WNIDS = ("n01440764", "n01443537")


def _imagenet_train(root: Path) -> None:
    """ImageNet's train/ layout, class k's JPEGs of grey value 60 + 120 k (8x8)."""
    for k, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for i in range(6):
            grey = np.full((8, 8), 60 + 120 * k, dtype=np.uint8)
            Image.fromarray(grey).save(root / "train" / wnid / f"{wnid}_{i}.JPEG")


def _mean_by_label(split: object) -> dict[int, float]:
    x, y = stacked(split)
    return {int(c): float(x[y == c].mean()) for c in y.unique()}


def test_imagenet_with_val_in_class_folders(tmp_path: Path) -> None:
    _imagenet_train(tmp_path)
    for k, wnid in enumerate(WNIDS):
        (tmp_path / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            grey = np.full((8, 8), 60 + 120 * k, dtype=np.uint8)
            Image.fromarray(grey).save(tmp_path / "val" / wnid / f"v{i}.JPEG")
    d = load_data(DataConfig(spec=f"imagenet:{tmp_path}", image_size=8), seed=0)
    assert d.info.class_names == list(WNIDS) and d.info.name == "imagenet"
    assert d.info.sizes == {"train": 12, "val": 6, "test": 6}
    means = _mean_by_label(d.val)
    assert means[0] < means[1]  # the darker images are class 0's in val as in train


def test_imagenet_as_kaggle_ships_it_val_flat_labelled_by_its_table(tmp_path: Path) -> None:
    # imagenet-object-localization-challenge/{LOC_val_solution.csv, ILSVRC/Data/CLS-LOC/...}
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    _imagenet_train(root)
    (root / "val").mkdir()
    rows = ["ImageId,PredictionString"]
    for i in range(8):  # alternate classes, so file order alone cannot give the labels
        k = (i * 5) % 3 % 2
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        grey = np.full((8, 8), 60 + 120 * k, dtype=np.uint8)
        Image.fromarray(grey).save(root / "val" / f"{stem}.JPEG")
        rows.append(f"{stem},{WNIDS[k]} 1 2 30 40 {WNIDS[k]} 5 6 7 8")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "val" / "extra.JPEG")
    cfg = DataConfig(spec=f"imagenet:{root}", image_size=8)
    with pytest.raises(DataError, match="holds images without class folders") as e:
        load_data(cfg, seed=0)
    assert "LOC_val_solution.csv" in e.value.hint
    (tmp_path / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    d = load_data(cfg, seed=0)
    assert d.info.class_names == list(WNIDS) and d.info.sizes["val"] == 8  # extra.JPEG: no row
    x, y = stacked(d.val)
    expected = torch.tensor([(i * 5) % 3 % 2 for i in range(8)])
    assert torch.equal(y, expected)
    assert torch.equal(x.flatten(1).mean(1) > x.mean(), expected.bool())  # labels fit pixels
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n"
    )
    with pytest.raises(DataError, match="not classes of train"):
        load_data(cfg, seed=0)
    (tmp_path / "LOC_val_solution.csv").write_text("id;label\nx;y\n")
    with pytest.raises(DataError, match="is not ImageNet's validation solution"):
        load_data(cfg, seed=0)


def test_imagenet_from_image_net_org_val_flat_labelled_by_the_devkit(tmp_path: Path) -> None:
    import io
    import tarfile

    import scipy.io

    root = tmp_path / "imagenet"
    _imagenet_train(root)
    (root / "val").mkdir()
    classes = [(k * 2) % 3 % 2 for k in range(7)]
    for i, k in enumerate(classes, start=1):
        grey = np.full((8, 8), 60 + 120 * k, dtype=np.uint8)
        Image.fromarray(grey).save(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    # The devkit numbers classes by ILSVRC2012_ID (here 7 for the first wnid, 3 for the second)
    # and lists non-leaf synsets too, which are no class.
    fields = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array(
        [(7, WNIDS[0], "tench", 0), (1001, "n00001740", "entity", 2), (3, WNIDS[1], "goldfish", 0)],
        dtype=fields,
    ).reshape(-1, 1)
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"synsets": synsets})
    truth = "".join(f"{(7, 3)[k]}\n" for k in classes).encode()
    with tarfile.open(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in (
            ("meta.mat", meta.getvalue()),
            ("ILSVRC2012_validation_ground_truth.txt", truth),
        ):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    d = load_data(DataConfig(spec=f"imagenet:{root}", image_size=8), seed=0)
    x, y = stacked(d.val)
    assert torch.equal(y, torch.tensor(classes))
    assert torch.equal(x.flatten(1).mean(1) > x.mean(), y.bool())  # each label fits its pixels
    assert not (root / "val" / WNIDS[0]).exists()  # nothing moved or extracted
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataError, match="is not ImageNet's 2012 devkit"):
        load_data(DataConfig(spec=f"imagenet:{root}", image_size=8), seed=0)
