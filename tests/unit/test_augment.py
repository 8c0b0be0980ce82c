"""Training augmentation (data/augment.py): crops and flips checked by hand and against
torch's own padding, the same image for the same (seed, epoch, index) however batches are cut,
and a run stopped mid-epoch that resumes to the uninterrupted run's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe import faults
from kdpipe.config import DataConfig, TrainConfig
from kdpipe.data import load_data
from kdpipe.data.augment import BatchAugment
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.methods import get
from kdpipe.distill.trainer import fit


def test_a_crop_shifts_the_image_inside_a_black_border() -> None:
    aug = BatchAugment("crop", n=1, size=(4, 4), fill=[-9.0], seed=0)  # pad: 1 pixel
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # The corner chosen for image 0 in epoch 0, pinned to (0, 2): one row of border on top,
    # the image moved one column left, a column of border on the right.
    aug._drawn = (0, torch.tensor([False]), torch.tensor([[0, 2]]))
    expected = torch.tensor(
        [[-9, -9, -9, -9], [1, 2, 3, -9], [5, 6, 7, -9], [9, 10, 11, -9]], dtype=torch.float32
    )
    assert torch.equal(aug(x, torch.tensor([0]), 0)[0, 0], expected)
    aug._drawn = (0, torch.tensor([False]), torch.tensor([[1, 1]]))  # (pad, pad): unchanged
    assert torch.equal(aug(x, torch.tensor([0]), 0), x)


def test_every_image_gets_its_own_window_and_flip() -> None:
    n, c, h, w = 64, 3, 16, 12
    fill = [-1.0, -2.0, -3.0]
    aug = BatchAugment("crop-flip", n=n, size=(h, w), fill=fill, seed=5)
    x = torch.randn(n, c, h, w)
    out = aug(x, torch.arange(n), key=3)
    flips, corners = aug.draws(3)
    p = aug.pad
    assert p == 1 and set(corners.flatten().tolist()) == {0, 1, 2}
    assert 16 < int(flips.sum()) < 48  # about half are mirrored
    for i in range(n):
        # torch's padding, one channel at a time, then the window and the flip
        padded = torch.stack([F.pad(x[i, k], (p, p, p, p), value=fill[k]) for k in range(c)])
        r, q = corners[i].tolist()
        window = padded[:, r : r + h, q : q + w]
        assert torch.equal(out[i], window.flip(-1) if flips[i] else window), i


def test_an_image_is_augmented_alike_in_any_batch_and_anew_each_epoch() -> None:
    """What DDP (each rank a share of the batch) and resuming (later batches only) rely on."""
    n = 40
    x = torch.randn(n, 3, 32, 32)
    whole = BatchAugment("crop-flip", n, (32, 32), [0.0] * 3, seed=1)(x, torch.arange(n), 7)
    other = BatchAugment("crop-flip", n, (32, 32), [0.0] * 3, seed=1)
    idx = torch.tensor([33, 2, 17, 5])
    assert torch.equal(other(x[idx], idx, 7), whole[idx])
    assert not torch.equal(other(x, torch.arange(n), 8), whole)  # epoch 8 draws again
    reseeded = BatchAugment("crop-flip", n, (32, 32), [0.0] * 3, seed=2)
    assert not torch.equal(reseeded(x, torch.arange(n), 7), whole)


def test_augmentation_turns_the_teacher_table_off_and_enters_fingerprints_only_when_on() -> None:
    assert load_data(DataConfig(), 0).deterministic
    assert not load_data(DataConfig(augment="crop"), 0).deterministic
    assert "augment" not in DataConfig().content()  # runs from before keep their teachers
    assert DataConfig(augment="flip").content()["augment"] == "flip"
    with pytest.raises(ValueError, match="crop, flip, crop-flip"):
        BatchAugment("none", 1, (8, 8), [0.0], seed=0)


class _Stop(Exception):
    pass


def _train(out: Path, kind: str = "crop-flip") -> dict[str, torch.Tensor]:
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


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = _train(tmp_path / "whole")
    plain = _train(tmp_path / "plain", "none")  # the trainer did augment
    assert not all(torch.equal(plain[k], v) for k, v in whole.items())
    steps = {"n": 0}

    def crash(point: str) -> None:
        if point == "step":
            steps["n"] += 1
            if steps["n"] == 5:  # epoch 2, step 2: the checkpoint after step 1 is resumed
                raise _Stop

    monkeypatch.setattr(faults, "reached", crash)
    with pytest.raises(_Stop):
        _train(tmp_path / "cut")
    monkeypatch.undo()
    resumed = _train(tmp_path / "cut")
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name
