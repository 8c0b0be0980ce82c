"""Teacher-output cache: with deterministic transforms a sample's teacher logits never change,
so they are computed once per sample and reused every epoch instead of running the teacher
each step (the teacher is usually the most expensive network in the loop)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset


@torch.inference_mode()
def teacher_logits_table(teacher: nn.Module, dataset: Dataset, batch_size: int = 256) -> Tensor:
    """Teacher logits for every sample, row i for dataset[i]."""
    teacher.eval()
    device = next(teacher.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    rows = [teacher(x.to(device, non_blocking=True)).float() for x, _ in loader]
    return torch.cat(rows).clone()
