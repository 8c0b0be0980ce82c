"""Training augmentation (data/augment.py): crops and flips checked by hand and against
torch's own padding, the same image for the same (seed, epoch, index) however batches are cut,
and a run stopped mid-epoch that resumes to the uninterrupted run's weights."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe.core.config import DataConfig, TrainConfig
from kdpipe.data import load_data
from kdpipe.data.augment import BatchAugment, SampleDraw, resized_crop_boxes
from kdpipe.data.image_files import load_rgb
from kdpipe.distill import trainer
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.methods import get
from kdpipe.distill.stepper import Runtime
from kdpipe.distill.trainer import IndexedDataset, fit


def test_a_crop_shifts_the_image_inside_a_black_border() -> None:
    aug = BatchAugment("crop", n=1, size=(4, 4), fill=[-9.0], seed=0)  # pad: 1 pixel
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # The corner chosen for image 0 in epoch 0, pinned to (0, 2): one row of border on top,
    # the image moved one column left, a column of border on the right.
    aug._drawn = (0, torch.tensor([False]), torch.tensor([[0, 2]]), torch.empty(0, 4))
    expected = torch.tensor(
        [[-9, -9, -9, -9], [1, 2, 3, -9], [5, 6, 7, -9], [9, 10, 11, -9]], dtype=torch.float32
    )
    assert torch.equal(aug(x, torch.tensor([0]), 0)[0, 0], expected)
    aug._drawn = (0, torch.tensor([False]), torch.tensor([[1, 1]]), torch.empty(0, 4))  # unchanged
    assert torch.equal(aug(x, torch.tensor([0]), 0), x)


def test_every_image_gets_its_own_window_and_flip() -> None:
    n, c, h, w = 64, 3, 16, 12
    fill = [-1.0, -2.0, -3.0]
    aug = BatchAugment("crop-flip", n=n, size=(h, w), fill=fill, seed=5)
    x = torch.randn(n, c, h, w)
    out = aug(x, torch.arange(n), key=3)
    flips, corners, _ = aug.draws(3)
    p = aug.pad
    assert p == 1 and set(corners.flatten().tolist()) == {0, 1, 2}
    assert 16 < int(flips.sum()) < 48  # about half are mirrored
    for i in range(n):
        # torch's padding, one channel at a time, then the window and the flip
        padded = torch.stack([F.pad(x[i, k], (p, p, p, p), value=fill[k]) for k in range(c)])
        r, q = corners[i].tolist()
        window = padded[:, r : r + h, q : q + w]
        assert torch.equal(out[i], window.flip(-1) if flips[i] else window), i


def test_resized_crops_are_drawn_as_torchvision_draws_them() -> None:
    """Area 8-100 % of the image, aspect 3/4-4/3 (up to whole-pixel rounding), inside the
    image; over many draws, the same area and aspect as torchvision's get_params gives."""
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    n, h, w = 20_000, 24, 40
    boxes = resized_crop_boxes(torch.Generator().manual_seed(0), n, (h, w), (0.08, 1))
    left, top, cw, ch = boxes.unbind(1)
    assert (left >= 0).all() and (top >= 0).all() and (left + cw <= w).all()
    assert (top + ch <= h).all() and (cw > 0).all() and (ch > 0).all()
    # each side is the drawn one rounded to a whole pixel (+-0.5)
    assert ((cw + 0.5) * (ch + 0.5) >= 0.08 * h * w).all()
    assert ((cw - 0.5) / (ch + 0.5) <= 4 / 3).all() and ((cw + 0.5) / (ch - 0.5) >= 3 / 4).all()
    area, aspect = (cw * ch) / (h * w), cw / ch
    torch.manual_seed(0)
    image = Image.new("RGB", (w, h))
    ref = torch.tensor(
        [RandomResizedCrop.get_params(image, [0.08, 1], [3 / 4, 4 / 3]) for _ in range(n)]
    )
    ref_area, ref_aspect = (ref[:, 3] * ref[:, 2]) / (h * w), ref[:, 3] / ref[:, 2]
    # both means have a standard error of ~0.002 at 20,000 draws
    assert abs(area.mean() - ref_area.mean()) < 0.01
    assert abs(aspect.mean() - ref_aspect.mean()) < 0.01
    assert abs((area > 0.5).float().mean() - (ref_area > 0.5).float().mean()) < 0.02


def test_a_resized_crop_falls_back_to_the_centre_when_no_draw_fits() -> None:
    # 8 x 32 at 99.9-100 % of the area: no crop of aspect <= 4/3 fits in 10 tries, so
    # torchvision's fallback: full height, width 8 * 4/3 -> 11, centred: left (32 - 11) // 2
    boxes = resized_crop_boxes(torch.Generator().manual_seed(0), 3, (8, 32), (0.999, 1.0))
    assert boxes.tolist() == [[10, 0, 11, 8]] * 3


def test_a_resized_crop_is_the_bilinear_enlargement_of_its_window() -> None:
    x = torch.randn(3, 2, 8, 12)
    aug = BatchAugment("resized-crop", n=3, size=(8, 12), fill=[0.0, 0.0], seed=0)
    boxes = torch.tensor([[0, 0, 12, 8], [2, 1, 5, 4], [7, 3, 5, 5]])  # left, top, w, h
    flips = torch.zeros(3, dtype=torch.bool)
    aug._drawn = (0, flips, torch.zeros(3, 2, dtype=torch.long), boxes)
    out = aug(x, torch.arange(3), 0)
    assert torch.allclose(out[0], x[0], atol=1e-6)  # the whole image: itself
    # torch's own bilinear sampling (grid_sample) at the output pixel centres spread over
    # each window, in the whole image's coordinates
    for i in (1, 2):
        left, top, cw, ch = boxes[i].tolist()
        theta = torch.tensor(
            [[cw / 12, 0, (2 * left + cw) / 12 - 1], [0, ch / 8, (2 * top + ch) / 8 - 1]]
        )
        grid = F.affine_grid(theta[None], [1, 2, 8, 12], align_corners=False)
        ref = F.grid_sample(x[i : i + 1], grid, padding_mode="border", align_corners=False)
        assert torch.allclose(out[i], ref[0], atol=1e-5), i
    # inside the window away from its edges: F.interpolate of the window itself
    window = F.interpolate(x[1:2, :, 1:5, 2:7], size=(8, 12), mode="bilinear")
    assert torch.allclose(out[1, :, 2:-2, 3:-3], window[0, :, 2:-2, 3:-3], atol=1e-5)


def _noise_folder(root: Path, per_class: int, shape: tuple[int, int], seed: int) -> None:
    """Class folders a/ and b/ of random-noise PNGs of `shape` (H, W): every crop differs."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir()
        for i in range(per_class):
            pixels = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_image_files_are_cut_at_their_own_resolution_while_loading(tmp_path: Path) -> None:
    """A training image file gets its crop from the decoded file (60 x 90 here), resized to
    the run's 16 x 16, as torchvision's RandomResizedCrop cuts a PIL image; validation, and any
    load outside the trainer, resizes the whole image."""
    from torchvision.transforms import functional as TF

    _noise_folder(tmp_path, per_class=10, shape=(60, 90), seed=0)
    cfg = DataConfig(spec=f"imagefolder:{tmp_path}", image_size=16, augment="resized-crop")
    data = load_data(cfg, seed=0)
    train = IndexedDataset(data.train, crops=(7, (0.08, 1.0)))
    train.key = 3
    x, y, i, cropped = train[4]
    assert cropped and i == 4 and x.shape == (3, 16, 16)
    left, top, w, h = SampleDraw(7, 3, 4, (0.08, 1.0)).box((60, 90))
    assert (w, h) != (90, 60)
    file = data.train.dataset.samples[data.train.indices[4]][0]  # type: ignore[attr-defined]
    crop = TF.resized_crop(load_rgb(file), top, left, h, w, [16, 16], antialias=True)
    mean, std = data.info.mean, data.info.std
    assert torch.allclose(x, TF.normalize(TF.to_tensor(crop), mean, std), atol=1e-6)
    whole = TF.normalize(TF.to_tensor(TF.resize(load_rgb(file), [16, 16])), mean, std)
    assert torch.allclose(data.train[4][0], whole, atol=1e-6)  # outside the trainer
    train.key = 4
    assert not torch.allclose(train[4][0], x)  # another epoch, another crop
    # the batch step leaves images cut while loading alone, and cuts the others
    aug = BatchAugment("resized-crop", 10, (16, 16), [0.0] * 3, seed=7)
    batch = torch.stack([x, x])
    out = aug(batch, torch.tensor([4, 5]), 3, cropped=torch.tensor([True, False]))
    assert torch.equal(out[0], x) and not torch.allclose(out[1], x)
    assert torch.equal(out[1], aug(batch, torch.tensor([4, 5]), 3)[1])


@pytest.mark.slow  # starts processes
def test_training_on_image_files_cuts_every_crop_while_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit() over an image folder: every training image arrives cut (the batch step is never
    asked to cut one), in DataLoader workers too — forked, or spawned as on macOS (the
    dataset and its draws pickled) — and the result differs from no crops."""
    _noise_folder(tmp_path, per_class=12, shape=(30, 20), seed=1)
    cfg = DataConfig(spec=f"imagefolder:{tmp_path}", image_size=8, augment="resized-crop")
    data = load_data(cfg, seed=0)

    def train(kind: str, workers: int) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
        n = len(data.train)  # type: ignore[arg-type]
        aug = BatchAugment(kind, n, (8, 8), [0.0] * 3, seed=0) if kind != "none" else None
        cfg = TrainConfig(epochs=2, batch_size=8, lr=1e-2)
        fit(
            get("ce")(net),
            data.train,
            data.val,
            cfg,
            0,
            "t",
            augment=aug,
            runtime=Runtime(workers=workers),
        )
        return [p.detach().clone() for p in net.parameters()]

    def refuse(*_: object) -> None:
        raise AssertionError("an image file reached the batch step uncut")

    monkeypatch.setattr(BatchAugment, "_resized", refuse)
    cut, cut_in_workers = train("resized-crop", 0), train("resized-crop", 2)
    assert all(torch.equal(a, b) for a, b in zip(cut, cut_in_workers, strict=True))
    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("spawn", force=True)
    try:
        cut_in_spawned = train("resized-crop", 1)
    finally:
        multiprocessing.set_start_method(before, force=True)
    assert all(torch.equal(a, b) for a, b in zip(cut, cut_in_spawned, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(cut, train("none", 0), strict=True))


@pytest.mark.parametrize("kind", ["crop-flip", "resized-crop-flip"])
def test_an_image_is_augmented_alike_in_any_batch_and_anew_each_epoch(kind: str) -> None:
    """What DDP (each rank a share of the batch) and resuming (later batches only) rely on."""
    n = 40
    x = torch.randn(n, 3, 32, 32)
    whole = BatchAugment(kind, n, (32, 32), [0.0] * 3, seed=1)(x, torch.arange(n), 7)
    other = BatchAugment(kind, n, (32, 32), [0.0] * 3, seed=1)
    idx = torch.tensor([33, 2, 17, 5])
    assert torch.allclose(other(x[idx], idx, 7), whole[idx], atol=1e-6)
    assert not torch.allclose(other(x, torch.arange(n), 8), whole)  # epoch 8 draws again
    reseeded = BatchAugment(kind, n, (32, 32), [0.0] * 3, seed=2)
    assert not torch.allclose(reseeded(x, torch.arange(n), 7), whole)


def test_augmentation_turns_the_teacher_table_off_and_enters_fingerprints_only_when_on() -> None:
    assert load_data(DataConfig(), 0).deterministic
    assert not load_data(DataConfig(augment="crop"), 0).deterministic
    assert "augment" not in DataConfig().content()  # runs from before keep their teachers
    assert DataConfig(augment="flip").content()["augment"] == "flip"
    assert "crop_scale" not in DataConfig(augment="crop").content()
    assert DataConfig(augment="resized-crop", crop_scale=0.3).content()["crop_scale"] == 0.3
    with pytest.raises(ValueError, match="crop, flip, crop-flip"):
        BatchAugment("none", 1, (8, 8), [0.0], seed=0)


class _Stop(Exception):
    pass


def _train(out: Path, kind: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    student(torch.zeros(1, 3, 8, 8))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 3, 8, 8, generator=g), torch.randint(0, 5, (60,), generator=g)
    train, val = TensorDataset(x, y), TensorDataset(x[:10], y[:10])
    aug = BatchAugment(kind, len(train), (8, 8), [0.0] * 3, seed=0) if kind != "none" else None
    distiller = get("ce")(student)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2)
    fit(
        distiller,
        train,
        val,
        cfg,
        seed=0,
        desc="t",
        checkpoint=Checkpointing(out / "last.pt", key="k", every=1),
        augment=aug,
    )
    return {k: v.clone() for k, v in student.state_dict().items()}


@pytest.mark.parametrize("kind", ["crop-flip", "resized-crop-flip"])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    whole = _train(tmp_path / "whole", kind)
    plain = _train(tmp_path / "plain", "none")  # the trainer did augment
    assert not all(torch.equal(plain[k], v) for k, v in whole.items())
    steps = {"n": 0}
    step = trainer._Fit.step

    def crash(self: trainer._Fit, *args: object) -> None:
        step(self, *args)  # type: ignore[arg-type]
        steps["n"] += 1
        if steps["n"] == 5:  # epoch 2, step 2: the checkpoint after step 1 is resumed
            raise _Stop

    monkeypatch.setattr(trainer._Fit, "step", crash)
    with pytest.raises(_Stop):
        _train(tmp_path / "cut", kind)
    monkeypatch.undo()
    resumed = _train(tmp_path / "cut", kind)
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name
