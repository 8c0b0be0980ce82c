"""Hinton KD: the loss against values computed by hand, its pitfalls, and where gradients go."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.distill.methods.kd import HintonKD, kd_loss


def softmax(z: list[float], T: float) -> list[float]:
    e = [math.exp(v / T) for v in z]
    return [v / sum(e) for v in e]


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_kd_loss_matches_hand_computation() -> None:
    z_s = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
    z_t = [[3.0, 2.0, 1.0], [0.0, 0.0, 4.0]]
    T = 2.0
    # KL(teacher || student) per sample, mean over the batch ("batchmean"), times T^2.
    expected = (
        T * T * sum(kl(softmax(t, T), softmax(s, T)) for s, t in zip(z_s, z_t, strict=True)) / 2
    )
    got = kd_loss(torch.tensor(z_s), torch.tensor(z_t), T)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # The number itself, worked out once by hand for these logits.
    assert got.item() == pytest.approx(0.844401, rel=1e-5)


def test_kd_loss_direction_reduction_and_temperature() -> None:
    torch.manual_seed(0)
    z_s, z_t = torch.randn(4, 5), torch.randn(4, 5)
    T = 3.0
    loss = kd_loss(z_s, z_t, T)
    swapped = kd_loss(z_t, z_s, T)
    assert not torch.isclose(loss, swapped), "KL must be teacher || student, not symmetric"
    per_class_mean = (
        F.kl_div(F.log_softmax(z_s / T, 1), F.softmax(z_t / T, 1), reduction="mean") * T * T
    )
    assert loss.item() == pytest.approx(per_class_mean.item() * 5, rel=1e-5)  # batchmean = mean * K
    assert kd_loss(z_s, z_s, T).item() == pytest.approx(0.0, abs=1e-6)


def test_distiller_terms_weights_and_gradients() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    d = HintonKD(student, teacher, params={"T": 4.0, "alpha": 0.9})
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    z_s, terms = d(x, y)
    with torch.no_grad():
        z_t = teacher(x)
    assert terms["kd"].item() == pytest.approx(0.9 * kd_loss(z_s, z_t, 4.0).item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(0.1 * F.cross_entropy(z_s, y).item(), rel=1e-5)
    sum(terms.values()).backward()
    assert student.weight.grad is not None and student.weight.grad.abs().sum() > 0
    assert teacher.weight.grad is None
    assert all(p is not teacher.weight for p in d.trainable_parameters())
    d.train()
    assert not teacher.training


def test_cached_teacher_logits_give_the_same_loss() -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(6, 3), nn.Linear(6, 3)
    d = HintonKD(student, teacher)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    _, live = d(x, y)
    _, cached = d(x, y, teacher_logits=teacher(x).detach())
    assert live["kd"].item() == pytest.approx(cached["kd"].item(), rel=1e-6)


def test_unknown_hyperparameter_is_named() -> None:
    from kdpipe.core.errors import ConfigError

    with pytest.raises(ConfigError, match="no parameter 'temp'"):
        HintonKD(nn.Linear(2, 2), nn.Linear(2, 2), params={"temp": 3.0})
