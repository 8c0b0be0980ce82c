"""Precise BatchNorm statistics: which models lag, the averages by hand, an untouched RNG."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe.distill.precise_bn import lagging, needs_recalibration, recalibrate
from kdpipe.models import create

CPU = torch.device("cpu")


def test_torchvision_families_that_lag() -> None:
    assert lagging(create("mobilenet_v3_small", 10))  # BatchNorm momentum 0.01
    assert not lagging(create("resnet18", 10))  # PyTorch's default 0.1
    assert lagging(nn.Sequential(nn.BatchNorm1d(4, momentum=None)))  # cumulative average
    assert not lagging(nn.Sequential(nn.Linear(4, 4)))
    assert not lagging(nn.Sequential(nn.BatchNorm1d(4, momentum=0.01, track_running_stats=False)))


def test_depthwise_families_are_recalibrated_dense_ones_not() -> None:
    for name in ("mobilenet_v2", "efficientnet_b0", "shufflenet_v2_x0_5", "mobilenet_v3_small"):
        assert needs_recalibration(create(name, 10)), name
    for name in ("resnet18", "googlenet", "regnet_x_400mf"):  # grouped, not depthwise
        assert not needs_recalibration(create(name, 10)), name
    # depthwise without BatchNorm (ConvNeXt: LayerNorm) has nothing to recalibrate
    assert not needs_recalibration(create("convnext_tiny", 10))
    depthwise = nn.Conv2d(4, 4, 3, groups=4)
    assert needs_recalibration(nn.Sequential(depthwise, nn.BatchNorm2d(4)))
    assert not needs_recalibration(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.BatchNorm2d(4)))


def test_depthwise_model_with_default_momentum_is_recalibrated() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1, groups=3), nn.BatchNorm2d(3), nn.Flatten()).train()
    g = torch.Generator().manual_seed(2)
    data = TensorDataset(3 + torch.randn(32, 3, 1, 1, generator=g), torch.zeros(32).long())
    assert recalibrate([model], data, 16, CPU, 0) == 32
    with torch.no_grad():
        conv_out = model[0](data.tensors[0])
    torch.testing.assert_close(model[1].running_mean, conv_out.mean((0, 2, 3)))


def _features(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = 5 + 2 * torch.randn(n, 3, generator=g)
    return TensorDataset(x, torch.zeros(n, dtype=torch.long))


def test_statistics_are_the_equal_weight_average_over_the_sample() -> None:
    data = _features(64)
    bn = nn.BatchNorm1d(3, momentum=0.01)
    model = nn.Sequential(bn).train()
    used = recalibrate([model], data, batch_size=16, device=CPU, seed=0)
    assert used == 64
    # Four equal batches: the mean of batch means is the overall mean; the variance is the
    # mean of the batches' unbiased variances (in the order the fixed sample was drawn).
    x = data.tensors[0]
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    batches = x[order].split(16)
    torch.testing.assert_close(bn.running_mean, x.mean(0), rtol=0, atol=1e-5)
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-5, atol=1e-5)
    assert bn.momentum == 0.01 and model.training  # the layer and the mode as they were


def test_default_momentum_models_are_left_alone() -> None:
    bn = nn.BatchNorm1d(3)
    before = bn.running_mean.clone()
    assert recalibrate([nn.Sequential(bn)], _features(64), 16, CPU, 0) == 0
    assert torch.equal(bn.running_mean, before)


def test_no_batch_of_one_and_the_global_rng_untouched() -> None:
    # 33 images in batches of 16 would leave one image alone, which has no batch variance.
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=0.01), nn.Dropout(0.5)).train()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert recalibrate([model], _features(33), 16, CPU, 0) == 32
    assert torch.equal(torch.rand(3), expected)
