"""Precise BatchNorm statistics for models whose running averages lag their weights.

torchvision's MobileNetV3 tracks BatchNorm statistics with momentum 0.01 (MNASNet 0.0003).
After a short schedule (digits: ~9 steps an epoch) the running averages still hold mostly
their initial mean 0 / variance 1, and the model in eval mode predicts one class: 10 % on
digits while its training loss is near zero.

Depthwise convolutions followed by BatchNorm (MobileNetV2, EfficientNet, ShuffleNet) fail the
same way at the default momentum: a depthwise layer keeps each channel apart, so a channel
whose input dies has a batch variance near zero that training normalises to one, while the
running variance still holds the old value, up to 10^7 times larger. MobileNetV2 after the
default 8 epochs on digits: 13.9 % in eval mode, 90.0 % with recomputed statistics.

Such models get their statistics recomputed after every epoch over a fixed sample of
training images, weighted equally (`torch.optim.swa_utils.update_bn`): the "precise BN" of
pycls and detectron2. Dense-convolution models at PyTorch's default momentum (0.1; ResNets,
VGG, RegNet-X, GoogLeNet) keep their running averages untouched and pay nothing (a pass over
the sample costs a resnet18 on digits ~3 s an epoch, a third of its training).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, Subset

DEFAULT_MOMENTUM = 0.1
MAX_IMAGES = 4096  # pycls uses 8192 on ImageNet; a forward pass over this many is cheap


def lagging(model: nn.Module) -> bool:
    """Whether any BatchNorm layer averages slower than PyTorch's default (or cumulatively)."""
    return any(
        m.track_running_stats and (m.momentum is None or m.momentum < DEFAULT_MOMENTUM)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    )


def depthwise_with_bn(model: nn.Module) -> bool:
    """Whether the model has both a depthwise convolution and tracked BatchNorm statistics."""
    depthwise = any(
        isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
        for m in model.modules()
    )
    return depthwise and any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for m in model.modules()
    )


def needs_recalibration(model: nn.Module) -> bool:
    return lagging(model) or depthwise_with_bn(model)


def recalibrate(
    models: list[nn.Module], train: Dataset, batch_size: int, device: torch.device, seed: int
) -> int:
    """Recompute the BatchNorm statistics of each model in `models` that needs it over up to
    MAX_IMAGES training images (a fixed sample for `seed`); return how many images were used
    (0: none needs it). The global RNG (dropout, augmentation) is left as it was, so training
    and a resumed run go on drawing the same numbers."""
    todo = [m for m in models if needs_recalibration(m)]
    if not todo:
        return 0
    n = len(train)  # type: ignore[arg-type]
    size = min(n, MAX_IMAGES)
    if size % batch_size == 1 and size > 1:
        size -= 1  # a last batch of one image has no batch statistics to take
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size]
    sample = Subset(train, order.tolist())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for model in todo:
            loader = DataLoader(sample, batch_size=batch_size)
            update_bn(loader, model, device=device)  # yields (image, label, ...): uses image
    return len(sample)
