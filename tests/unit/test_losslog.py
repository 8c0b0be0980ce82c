"""The per-step loss log: sums equal to reading every step at once, and the NaN/Inf guard
naming the step — read immediately on the CPU, after the GPU gets there on CUDA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdpipe.core.errors import TrainingError
from kdpipe.distill.base import ce_loss
from kdpipe.distill.losslog import LossLog

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_sums_match_reading_every_step(device: str) -> None:
    torch.manual_seed(0)
    steps = [
        {"kd": torch.rand((), device=device), "ce": torch.rand((), device=device)}
        for _ in range(30)
    ]
    log = LossLog(deferred=device == "cuda")
    for i, terms in enumerate(steps):
        log.add({**terms, "d_loss": 0.5}, f"step {i + 1}")
    sums = log.flush()
    assert log.read == 30
    for k in ("kd", "ce"):
        assert sums[k] == pytest.approx(sum(float(t[k]) for t in steps), rel=1e-6)
    assert sums["d_loss"] == pytest.approx(15.0)
    assert log.means()["kd"] == pytest.approx(sums["kd"] / 30)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_term_is_named_with_its_step(device: str) -> None:
    log = LossLog(deferred=device == "cuda")
    with pytest.raises(TrainingError, match="loss term 'ce' became inf at epoch 1 step 3"):
        for i in range(5):
            value = float("inf") if i == 2 else 1.0
            log.add(
                {"kd": torch.tensor(1.0, device=device), "ce": torch.tensor(value, device=device)},
                f"epoch 1 step {i + 1}",
            )
        log.flush()


def test_resumed_log_continues_the_epoch_sums() -> None:
    log = LossLog(deferred=False, sums={"kd": 3.0}, read=3)
    log.add({"kd": torch.tensor(1.0)}, "step 4")
    assert log.flush() == {"kd": 4.0} and log.means() == {"kd": 1.0}


def test_ce_loss_ignores_unlabeled_samples_without_host_reads() -> None:
    torch.manual_seed(0)
    z = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, -1, 3, 2, -1, 1])
    m = y >= 0
    for smoothing in (0.0, 0.1):
        expected = F.cross_entropy(z[m], y[m], label_smoothing=smoothing)
        assert ce_loss(z, y, smoothing).item() == pytest.approx(expected.item(), rel=1e-12)
    assert ce_loss(z, torch.full((6,), -1)).item() == 0.0  # none labeled: no signal, no NaN
