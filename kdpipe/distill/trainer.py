"""The training loop shared by teacher training and every distillation method.

AdamW (or SGD) with a one-cycle schedule, channels-last tensors (faster convolutions on CPU
and GPU), the distiller's loss terms summed and logged separately, validation accuracy per
epoch, one JSON line per epoch in `log.jsonl`, and a progress bar with images/s and ETA.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdpipe import ui
from kdpipe.config import TrainConfig
from kdpipe.distill.base import Distiller
from kdpipe.profile.accuracy import predict_logits, top1


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    val_accuracy: float = 0.0
    seconds: float = 0.0
    images_per_s: float = 0.0


class IndexedDataset(Dataset):
    """Yields (image, label, index) so cached per-sample teacher outputs can be looked up."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        x, y = self.base[i]
        return x, y, i


def make_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    return opt, sched


def stage_epochs(fraction: float, epochs: int) -> int:
    """Epochs of a stage: the main stage runs all of them, an initialization stage a fraction."""
    return epochs if fraction >= 1.0 else max(1, round(fraction * epochs))


def fit(
    distiller: Distiller,
    train: Dataset,
    val: Dataset,
    cfg: TrainConfig,
    seed: int,
    desc: str,
    log_path: Path | None = None,
    teacher_cache: Tensor | None = None,
    workers: int = 0,
) -> FitResult:
    """Train `distiller` stage by stage (most methods have one stage of cfg.epochs; FitNets,
    AB, FT and FSP first run an initialization stage); return the per-epoch history."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        IndexedDataset(train),
        batch_size=cfg.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=workers,
        drop_last=len(train) > cfg.batch_size,  # type: ignore[arg-type]
    )
    distiller.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    plan = [(st.name, stage_epochs(st.epochs_fraction, cfg.epochs)) for st in distiller.stages]
    total_steps = sum(e for _, e in plan) * len(loader)
    result = FitResult()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
    start = time.perf_counter()
    seen = 0
    with ui.progress() as bar:
        task = bar.add_task(desc, total=total_steps, rate="", stats="")
        for stage_name, epochs in plan:
            distiller.stage = stage_name
            # A fresh optimizer and schedule per stage, as the multi-stage papers train.
            params = list(distiller.trainable_parameters())
            opt, sched = make_optimizer(params, cfg, epochs * len(loader))
            label = f"{stage_name} " if len(plan) > 1 else ""
            for epoch in range(1, epochs + 1):
                distiller.train()
                distiller.epoch = epoch
                sums: dict[str, float] = {}
                batches = 0
                for x, y, idx in loader:
                    distiller.progress = ((epoch - 1) * len(loader) + batches) / (
                        epochs * len(loader)
                    )
                    x = x.contiguous(memory_format=torch.channels_last)
                    cached = teacher_cache[idx] if teacher_cache is not None else None
                    distiller.logged.clear()
                    terms = distiller.train_step(x, y, cached, opt)
                    sched.step()
                    batches += 1
                    seen += len(y)
                    values = {k: float(v) for k, v in terms.items()} | distiller.logged
                    for k, value in values.items():
                        sums[k] = sums.get(k, 0.0) + value
                    rate = seen / (time.perf_counter() - start)
                    shown = " ".join(f"{k}={v / batches:.3f}" for k, v in sums.items())
                    bar.update(
                        task,
                        advance=1,
                        rate=f"{rate:.0f} img/s",
                        stats=f"{label}ep {epoch}/{epochs} {shown}",
                    )
                val_logits, val_labels = predict_logits(distiller.student(), val)
                val_acc = top1(val_logits, val_labels)
                entry = {
                    "stage": stage_name,
                    "epoch": epoch,
                    **{f"loss_{k}": v / max(batches, 1) for k, v in sums.items()},
                    "val_accuracy": val_acc,
                    "lr": sched.get_last_lr()[0],
                    "images_per_s": seen / (time.perf_counter() - start),
                    "seconds": time.perf_counter() - start,
                }
                result.history.append(entry)
                if log_path is not None:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(entry) + "\n")
                bar.update(task, stats=f"{label}ep {epoch}/{epochs} {shown} val={val_acc:.3f}")
    distiller.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    result.seconds = time.perf_counter() - start
    result.images_per_s = seen / max(result.seconds, 1e-9)
    result.val_accuracy = result.history[-1]["val_accuracy"] if result.history else 0.0
    return result
