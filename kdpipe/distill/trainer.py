"""The training loop shared by teacher training and every distillation method.

AdamW (or SGD) with a one-cycle schedule per stage, channels-last tensors (see
place_for_training), the distiller's loss terms summed and logged separately, validation
accuracy per epoch, one JSON line per epoch in `log.jsonl`, a progress bar with images/s and
ETA (rank 0 only). Around that:
  - data order: a DistributedSampler permutation per (seed, stage, epoch), so the position in
    the data is just (stage, epoch, batch) and a resumed run sees the same batches;
  - checkpoints every epoch and every `checkpoint_every` steps (checkpoint.py); a rerun resumes
    from the last one and, on CPU with a fixed seed, ends bit-identical to an uninterrupted run;
  - a NaN/Inf guard that stops with the step and the loss term, before the bad update;
  - precise BatchNorm statistics after each epoch for models whose running averages lag or
    follow depthwise convolutions (precise_bn.py: MobileNetV3 and MobileNetV2 would otherwise
    evaluate near chance after a short schedule);
  - CUDA when present: autocast (bf16, else fp16 with a grad scaler), pinned memory and
    non-blocking copies; on several ranks, gradients averaged by distributed.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, DistributedSampler, Subset

from kdpipe.core import faults, ui
from kdpipe.core.config import TrainConfig
from kdpipe.data.augment import BatchAugment, SampleDraw, cropping
from kdpipe.data.loader import WorkerLoader
from kdpipe.data.splits import DataSplits
from kdpipe.distill import checkpoint as ckpt
from kdpipe.distill import precise_bn, sync_bn
from kdpipe.distill.base import Distiller
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.losslog import LossLog
from kdpipe.distill.optimizers import fused
from kdpipe.distill.stepper import Runtime, Stepper, loader_workers
from kdpipe.parallel import distributed, stopping
from kdpipe.runtimes.accuracy import predict_logits


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    val_accuracy: float = 0.0
    seconds: float = 0.0
    images: int = 0  # images trained on, over every stage and epoch (dropped tails excluded)
    images_per_s: float = 0.0
    resumed_from: str | None = None
    teacher_precision: str = "fp32"  # the teacher's inference precision (Runtime.teacher_dtype)


class IndexedDataset(Dataset):
    """Yields (image, label, index, cropped): the index so cached per-sample teacher outputs
    can be looked up; with `crops` (seed, scale), each image is loaded within a SampleDraw of
    (seed, `key`, index), and `cropped` says whether its loader cut the resized crop."""

    def __init__(self, base: Dataset, crops: tuple[int, tuple[float, float]] | None) -> None:
        self.base, self.crops = base, crops
        self.key = 0  # the epoch, set before each epoch's DataLoader copies this to workers

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int, bool]:
        faults.reached("load")
        if self.crops is None:
            x, y = self.base[i]
            return x, y, i, False
        seed, scale = self.crops
        with cropping(SampleDraw(seed, self.key, i, scale)) as draw:
            x, y = self.base[i]
        return x, y, i, draw.cropped


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch_key: int, start: int = 0
) -> list[list[int]]:
    """This rank's batches of one epoch: one permutation per (seed, epoch_key) shared by all
    ranks and split by DistributedSampler; `batch_size` is the global batch. Batches before
    `start` are skipped (resuming mid-epoch)."""
    d = distributed.current()
    sampler: DistributedSampler = DistributedSampler(
        range(n),  # type: ignore[arg-type]
        num_replicas=d.world,
        rank=d.rank,
        shuffle=True,
        seed=seed,
    )
    sampler.set_epoch(epoch_key)
    order = list(sampler)
    per_rank = max(1, batch_size // d.world)
    batches = [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
    if len(batches) > 1 and len(batches[-1]) < per_rank:
        batches.pop()  # equal-size steps; the dropped tail differs every epoch
    return batches[start:]


def make_optimizer(
    params: list[nn.Parameter], cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = fused(
            torch.optim.SGD,
            params,
            lr=cfg.lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=cfg.weight_decay,
        )
    else:
        opt = fused(torch.optim.AdamW, params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    return opt, sched


def place_for_training(module: nn.Module, device: torch.device) -> None:
    """Move `module` to `device` channels-last. On the CPU, the trainable dense k x k
    convolutions (k > 1, one group) keep their weights in the default layout: for those,
    oneDNN's backward returns the weight gradient in the default layout and torch copies it to
    channels-last, and the fused CPU optimizer then clones every channels-last tensor to a
    contiguous one and back — two copies of each 9 MB resnet18 weight per step. Depthwise and
    1 x 1 convolutions stay channels-last (a contiguous depthwise weight made MobileNetV2's
    step 2.5x slower), and so does a frozen teacher (its bf16 inference was not faster).
    Measured on the 2-core CPU, resnet18 distill stage: 4-5 % less time per step."""
    module.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if device.type != "cpu":
        return  # cuDNN wants channels-last weights with channels-last activations
    for conv in module.modules():
        if (
            isinstance(conv, nn.Conv2d)
            and conv.groups == 1
            and max(conv.kernel_size) > 1
            and conv.weight.requires_grad
        ):
            conv.weight.data = conv.weight.data.contiguous()


def _fits_this_world(
    saved: dict, per_epoch: int, world: int, desc: str, checkpoint: Checkpointing | None
) -> dict | None:
    """A checkpoint written by another number of processes: its position (epoch, step) means
    the same here when an epoch has as many steps, else it is set aside (a global batch that
    does not split evenly can change the count, and the schedule would run out of steps)."""
    was_world, was_steps = int(saved.get("world", world)), int(saved.get("per_epoch", per_epoch))
    where = checkpoint.path if checkpoint else "the checkpoint"
    if was_steps != per_epoch:
        ui.warn(
            f"{desc}: not resuming from {where}: it counts {was_steps} steps per epoch on "
            f"{was_world} processes, this run {per_epoch} on {world}; starting the stage over"
        )
        return None
    if was_world != world:
        ui.info(
            f"{desc}: resuming a checkpoint of {was_world} processes on {world}: the same "
            "step, but the data order from here on is not an uninterrupted run's"
        )
    return saved


def _predict_share(model: nn.Module, dataset: Dataset, workers: int) -> tuple[Tensor, Tensor]:
    """predict_logits over this rank's contiguous share of `dataset` (all of it on one
    process); empty (0 x 0) logits for an empty share."""
    n = len(dataset)  # type: ignore[arg-type]
    _, lo, hi = distributed.share_of(n)
    if hi <= lo:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    part = dataset if (lo, hi) == (0, n) else Subset(dataset, range(lo, hi))
    return predict_logits(model, part, workers=workers)


def val_accuracy(model: nn.Module, val: Dataset, workers: int) -> float:
    """Top-1 on `val`. Under torchrun each rank predicts a contiguous share and the correct
    counts are summed: every rank gets the figure one process gets, for 1/N of the work
    (each rank predicted the whole set, N times the work for ImageNet's 50,000 images)."""
    logits, labels = _predict_share(model, val, workers)
    correct = int((logits.argmax(1) == labels).sum()) if len(labels) else 0
    n = len(val)  # type: ignore[arg-type]
    # as top1() computes it: a float32 mean
    return float(torch.tensor(distributed.sum_over_ranks(correct), dtype=torch.float32) / n)


def predict_shared(model: nn.Module, dataset: Dataset, workers: int) -> tuple[Tensor, Tensor]:
    """predict_logits over all of `dataset` on every rank; under torchrun each rank predicts a
    contiguous share and the logits and labels are gathered (1/N of the work each)."""
    logits, labels = _predict_share(model, dataset, workers)
    if not distributed.current().active:
        return logits, labels
    # a rank with no share still needs the number of classes for its empty rows
    k = int(distributed.max_over_ranks(torch.tensor([logits.shape[1]]))[0])
    logits = logits if logits.shape[1] == k else torch.zeros(0, k)
    n = len(dataset)  # type: ignore[arg-type]
    return distributed.gather_shares(logits, n), distributed.gather_shares(labels, n)


def predict_test(model: nn.Module, data: DataSplits, asked: int | None) -> tuple[Tensor, Tensor]:
    """predict_shared over the test split, read by the loader workers a run picks for where
    training left the model (stepper.loader_workers; `asked`: data.workers)."""
    cuda = next(model.parameters()).device.type == "cuda"
    return predict_shared(model, data.test, loader_workers(asked, cuda, data.in_memory))


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
    runtime: Runtime | None = None,
    checkpoint: Checkpointing | None = None,
    augment: BatchAugment | None = None,
) -> FitResult:
    """Train `distiller` stage by stage (most methods have one stage of cfg.epochs; FitNets,
    AB, FT and FSP first run an initialization stage); return the per-epoch history. With
    `checkpoint`, resume from a matching checkpoint and write new ones as training goes;
    with `augment`, each training batch is augmented on the device (data/augment.py)."""
    rt = runtime or Runtime()
    d = distributed.current()
    torch.manual_seed(seed)
    dataset = IndexedDataset(train, augment.crops_while_loading if augment else None)
    n = len(dataset)
    per_epoch = len(epoch_batches(n, cfg.batch_size, seed, 0))
    place_for_training(distiller, rt.device)
    if teacher_cache is not None:
        teacher_cache = teacher_cache.to(rt.device)
    plan = [(st.name, stage_epochs(st.epochs_fraction, cfg.epochs)) for st in distiller.stages]
    total_steps = sum(e for _, e in plan) * per_epoch
    stepper = Stepper(rt)
    distiller.stepper = stepper
    result = FitResult()

    # Where to start: the beginning, or the position a matching checkpoint recorded.
    pos = {"stage": 0, "epoch": 1, "batch": 0}
    found = ckpt.load(checkpoint) if checkpoint else None
    saved, source = found if found else (None, None)
    if saved is not None:
        saved = _fits_this_world(saved, per_epoch, d.world, desc, checkpoint)
    sums: dict[str, float] = {}  # an epoch's loss sums so far (from a checkpoint when resuming)
    seen, elapsed = 0, 0.0
    if saved is not None:
        ckpt.restore_module(distiller, saved["model"])
        pos = {k: int(saved[k]) for k in ("stage", "epoch", "batch")}
        sums, seen, elapsed = dict(saved["sums"]), int(saved["seen"]), float(saved["elapsed"])
        result.history = list(saved["history"])
        result.resumed_from = f"stage {pos['stage']} epoch {pos['epoch']} batch {pos['batch']}"
        ui.info(f"{desc}: resuming from {source} ({result.resumed_from})")
    # Every rank starts from rank 0's state (the frozen teacher: teacher.py makes it rank 0's).
    distributed.broadcast_state(ckpt.trainable_state(distiller))
    if log_path is not None and d.main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("".join(json.dumps(h) + "\n" for h in result.history))

    start = time.perf_counter() - elapsed
    done_before = sum(e for _, e in plan[: pos["stage"]]) * per_epoch
    done_before += (pos["epoch"] - 1) * per_epoch + pos["batch"]
    anomaly = (
        torch.autograd.set_detect_anomaly(True) if rt.detect_anomaly else contextlib.nullcontext()
    )
    writer = ckpt.Writer(background=rt.cuda, resumed_from=source)

    def save(position: dict[str, int], sums: dict[str, float], reached: str | None = None) -> None:
        """Checkpoint the training state as it is now (rank 0 writes; see ckpt.Writer)."""
        if checkpoint is None or not d.main:
            return
        state = {
            **position,
            "model": ckpt.trainable_state(distiller),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": stepper.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "sums": sums,
            "seen": seen,
            "elapsed": time.perf_counter() - start,
            "history": result.history,
            "per_epoch": per_epoch,  # steps per epoch, and the processes that took them
            "world": d.world,
        }
        writer.submit(checkpoint, state, reached)

    synced = sync_bn.global_statistics(distiller, rt.sync_bn and d.active, rt.cuda)
    with ui.progress() as bar, anomaly, writer.finished_on_error(), stopping.deferred(), synced:
        task = bar.add_task(desc, total=total_steps, completed=done_before, rate="", stats="")
        for stage_index, (stage_name, epochs) in enumerate(plan):
            if stage_index < pos["stage"]:
                continue
            distiller.stage = stage_name
            # A fresh optimizer and schedule per stage, as the multi-stage papers train.
            params = list(distiller.trainable_parameters())
            opt, sched = make_optimizer(params, cfg, epochs * per_epoch)
            resuming = saved is not None and stage_index == pos["stage"]
            if resuming:
                assert saved is not None
                if (pos["epoch"], pos["batch"]) != (1, 0):  # else: the stage's fresh optimizer
                    opt.load_state_dict(saved["optimizer"])
                    sched.load_state_dict(saved["scheduler"])
                stepper.scaler.load_state_dict(saved["scaler"])
                ckpt.set_rng_state(saved["rng"])
            label = f"{stage_name} " if len(plan) > 1 else ""
            first_epoch = pos["epoch"] if resuming else 1
            for epoch in range(first_epoch, epochs + 1):
                distiller.train()
                distiller.epoch = epoch
                skip = pos["batch"] if resuming and epoch == first_epoch else 0
                log = LossLog(rt.cuda, sums if skip else {}, read=skip)
                batches = skip
                key = stage_index * 100_003 + epoch
                dataset.key = key
                loader = WorkerLoader(
                    dataset,
                    batch_sampler=epoch_batches(n, cfg.batch_size, seed, key, skip),  # type: ignore[arg-type]
                    num_workers=rt.workers,
                    pin_memory=rt.cuda,
                    # Its own generator: creating an iterator must not draw from the global
                    # one, whose state a checkpoint restores (dropout masks depend on it).
                    generator=torch.Generator().manual_seed(key),
                )
                for x, y, idx, cropped in loader:
                    distiller.progress = ((epoch - 1) * per_epoch + batches) / (epochs * per_epoch)
                    stepper.where = f"{stage_name} epoch {epoch} step {batches + 1}"
                    x = x.to(rt.device, non_blocking=True)
                    # non_blocking: a plain copy of pinned memory waits for the GPU to finish
                    idx = idx.to(rt.device, non_blocking=True)
                    if augment is not None:
                        x = augment(x, idx, key, cropped)
                    if x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    y = y.to(rt.device, non_blocking=True)
                    cached = teacher_cache[idx] if teacher_cache is not None else None
                    distiller.logged.clear()
                    terms = distiller.train_step(x, y, cached, opt)
                    sched.step()
                    batches += 1
                    seen += len(y) * d.world
                    log.add({**terms, **distiller.logged}, stepper.where)
                    rate = seen / (time.perf_counter() - start)
                    shown = " ".join(f"{k}={v:.3f}" for k, v in log.means().items())
                    bar.update(
                        task,
                        advance=1,
                        rate=f"{rate:.0f} img/s",
                        stats=f"{label}ep {epoch}/{epochs} {shown}",
                    )
                    faults.reached("step")
                    at_end = batches == per_epoch  # epoch ends have their own checkpoint
                    ask = not at_end and stopping.due(batches, rt.cuda)
                    stop = stopping.requested() if ask else 0
                    if (
                        checkpoint
                        and (stop or (checkpoint.every and batches % checkpoint.every == 0))
                        and not at_end
                    ):
                        save({"stage": stage_index, "epoch": epoch, "batch": batches}, log.flush())
                    if stop:  # a signal (stopping.py): this very position is what resumes
                        writer.wait()
                        where = f"in {desc} after {label}epoch {epoch} step {batches}"
                        raise stopping.Stopped(stop, where, saved=checkpoint is not None)
                sums = log.flush()  # every step read (and guarded) before anything is saved
                # BatchNorm that tracks slowly (MobileNetV3) or after depthwise convolutions
                # (MobileNetV2, EfficientNet) gets statistics that match its weights.
                recalibrated = precise_bn.recalibrate(
                    distiller.students(), train, cfg.batch_size, rt.device, seed
                )
                distributed.broadcast_buffers(distiller)
                val_acc = val_accuracy(distiller.student(), val, rt.workers)
                means = distributed.mean_over_ranks(
                    {k: v / max(batches, 1) for k, v in sums.items()}
                )
                entry = {
                    "stage": stage_name,
                    "epoch": epoch,
                    **{f"loss_{k}": v for k, v in means.items()},
                    "val_accuracy": val_acc,
                    **({"bn_recalibrated_images": recalibrated} if recalibrated else {}),
                    "lr": sched.get_last_lr()[0],
                    "images_per_s": seen / (time.perf_counter() - start),
                    "seconds": time.perf_counter() - start,
                }
                result.history.append(entry)
                if log_path is not None and d.main:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(entry) + "\n")
                if checkpoint:
                    # The position after this epoch: the next epoch, or the next stage.
                    nxt = (
                        {"stage": stage_index, "epoch": epoch + 1, "batch": 0}
                        if epoch < epochs
                        else {"stage": stage_index + 1, "epoch": 1, "batch": 0}
                    )
                    if nxt["stage"] < len(plan):
                        save(nxt, {}, reached="epoch")
                bar.update(task, stats=f"{label}ep {epoch}/{epochs} {shown} val={val_acc:.3f}")
                last = stage_index == len(plan) - 1 and epoch == epochs
                stop = stopping.requested()  # every rank is here, at every epoch end
                if stop and not last:  # after the last epoch the stage finishes first (api.py)
                    writer.wait()
                    where = f"in {desc} after {label}epoch {epoch}"
                    raise stopping.Stopped(stop, where, saved=checkpoint is not None)
    # Back to the CPU in the default layout: export and profiling start from there.
    distiller.to(torch.device("cpu"), memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    writer.wait()
    if checkpoint and d.main:
        ckpt.discard(checkpoint)  # the stage's outputs now stand for it
    result.teacher_precision = rt.teacher_precision
    result.seconds = time.perf_counter() - start
    result.images = seen
    result.images_per_s = seen / max(result.seconds, 1e-9)
    result.val_accuracy = result.history[-1]["val_accuracy"] if result.history else 0.0
    return result
