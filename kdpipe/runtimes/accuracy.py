"""Accuracy of a model on a dataset: logits for every sample, top-1, agreement between models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdpipe.core import ui
from kdpipe.data.loader import WorkerLoader


def in_order(dataset: Dataset, batch_size: int, workers: int, device: torch.device) -> WorkerLoader:
    """Every sample of `dataset` once, in order, for inference: read by `workers` DataLoader
    processes (which leave a stop to the training process: stopping.loader_worker_init),
    pinned when the batches go to a GPU."""
    return WorkerLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


@torch.inference_mode()
def predict_logits(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, workers: int = 0
) -> tuple[Tensor, Tensor]:
    """Logits [N, K] and labels [N] for every sample of `dataset`, model in eval mode, read
    by `workers` DataLoader processes (pinned for a GPU)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    device = next(model.parameters()).device
    for x, y in in_order(dataset, batch_size, workers, device):
        logits.append(model(x.to(device, non_blocking=True)).float().cpu())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def call_logits(
    predict: Callable[[Tensor], Tensor], dataset: Dataset, batch_size: int = 128
) -> tuple[Tensor, Tensor]:
    """Logits and labels for every sample of `dataset`, from a runtime's call (images in)."""
    out, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        out.append(predict(x))
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def top1(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def agreement(a: Tensor, b: Tensor) -> float:
    """Share of samples on which two logit sets predict the same class."""
    return float((a.argmax(1) == b.argmax(1)).float().mean())


def near_chance(accuracy: float, num_classes: int) -> bool:
    """Within a tenth of the way from chance (1/k) to perfect: the model learned ~nothing."""
    chance = 1.0 / num_classes
    return accuracy < chance + 0.1 * (1.0 - chance)


def warn_near_chance(role: str, arch: str, accuracy: float, num_classes: int, fix: str) -> None:
    """Name a model that learned ~nothing, with what to try (`fix`)."""
    if near_chance(accuracy, num_classes):
        where = "below" if accuracy < 1 / num_classes else "near"
        ui.warn(
            f"{role} {arch} scores {100 * accuracy:.1f} % test top-1, {where} chance "
            f"({100 / num_classes:.1f} %): {fix}, or choose another {role}"
        )
