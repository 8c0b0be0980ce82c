"""Model complexity: parameters, FLOPs per image (torch.utils.flop_counter), file sizes."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_image(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Floating-point operations (a multiply-add counts 2) of one forward pass on one image."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, *input_size))
    model.train(was_training)
    return int(counter.get_total_flops())
