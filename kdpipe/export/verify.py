"""Parity of an exported model with PyTorch on real images: max |dlogit|, top-1 agreement, accuracy."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset, Subset


def parity(reference: Tensor, candidate: Tensor, labels: Tensor) -> dict:
    """How closely `candidate` logits follow the PyTorch `reference` logits on the same images."""
    diff = (candidate - reference).abs()
    scale = float(reference.abs().max().clamp_min(1.0))
    return {
        "samples": int(len(labels)),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max()) / scale,
        "top1_agreement": float((candidate.argmax(1) == reference.argmax(1)).float().mean()),
        "accuracy": float((candidate.argmax(1) == labels).float().mean()),
        "reference_accuracy": float((reference.argmax(1) == labels).float().mean()),
    }


def parity_subset(dataset: Dataset, samples: int) -> Dataset:
    n = min(samples, len(dataset))  # type: ignore[arg-type]
    return dataset if n == len(dataset) else Subset(dataset, list(range(n)))  # type: ignore[arg-type]
