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

from kdpipe.core import ui
from kdpipe.core.config import TrainConfig
from kdpipe.core.errors import Stopped
from kdpipe.data.augment import BatchAugment, SampleDraw, cropping
from kdpipe.data.loader import WorkerLoader
from kdpipe.data.splits import DataSplits
from kdpipe.distill import checkpoint as ckpt
from kdpipe.distill import data_parallel, precise_bn, sync_bn
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
    _, lo, hi = data_parallel.share_of(n)
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
    return float(torch.tensor(sum(distributed.gather_objects(correct)), dtype=torch.float32) / n)


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
    return data_parallel.gather_shares(logits, n), data_parallel.gather_shares(labels, n)


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
    run = _Fit(distiller, cfg, seed, desc, runtime or Runtime(), checkpoint)
    run.take_data(train, val, augment)
    if teacher_cache is not None:
        run.teacher_cache = teacher_cache.to(run.rt.device)
    run.resume()
    run.start_log(log_path)
    return run.train()


@dataclass
class _Position:
    """Where training is: a stage of the plan, an epoch of it (from 1), batches done in it."""

    stage: int = 0
    epoch: int = 1
    batch: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"stage": self.stage, "epoch": self.epoch, "batch": self.batch}


class _Fit:
    """One call of `fit`: the state a checkpoint records and the loops that advance it."""

    def __init__(
        self,
        distiller: Distiller,
        cfg: TrainConfig,
        seed: int,
        desc: str,
        rt: Runtime,
        checkpoint: Checkpointing | None,
    ) -> None:
        self.distiller, self.cfg, self.seed, self.desc, self.rt = distiller, cfg, seed, desc, rt
        self.checkpoint = checkpoint
        self.d = distributed.current()
        torch.manual_seed(seed)
        self.teacher_cache: Tensor | None = None
        self.plan = [
            (s.name, stage_epochs(s.epochs_fraction, cfg.epochs)) for s in distiller.stages
        ]
        self.stepper = Stepper(rt)
        distiller.stepper = self.stepper
        self.result = FitResult()
        self.pos = _Position()
        self.saved: dict | None = None
        self.source: Path | None = None
        self.sums: dict[str, float] = {}  # an epoch's loss sums so far
        self.seen, self.elapsed = 0, 0.0
        self.log_path: Path | None = None

    def take_data(self, train: Dataset, val: Dataset, augment: BatchAugment | None) -> None:
        self.train_set, self.val, self.augment = train, val, augment
        self.dataset = IndexedDataset(train, augment.crops_while_loading if augment else None)
        self.n = len(self.dataset)
        self.per_epoch = len(epoch_batches(self.n, self.cfg.batch_size, self.seed, 0))
        place_for_training(self.distiller, self.rt.device)

    def resume(self) -> None:
        """Take the position and state a matching checkpoint recorded, if there is one; then
        every rank starts from rank 0's state (the frozen teacher is rank 0's already)."""
        found = ckpt.load(self.checkpoint) if self.checkpoint else None
        saved, self.source = found if found else (None, None)
        if saved is not None:
            saved = _fits_this_world(
                saved, self.per_epoch, self.d.world, self.desc, self.checkpoint
            )
        if saved is not None:
            ckpt.restore_module(self.distiller, saved["model"])
            self.pos = _Position(*(int(saved[k]) for k in ("stage", "epoch", "batch")))
            self.sums, self.seen = dict(saved["sums"]), int(saved["seen"])
            self.elapsed = float(saved["elapsed"])
            self.result.history = list(saved["history"])
            p = self.pos
            self.result.resumed_from = f"stage {p.stage} epoch {p.epoch} batch {p.batch}"
            ui.info(f"{self.desc}: resuming from {self.source} ({self.result.resumed_from})")
        self.saved = saved
        data_parallel.broadcast_state(ckpt.trainable_state(self.distiller))

    def start_log(self, log_path: Path | None) -> None:
        """log.jsonl holds the history so far (a resumed run's epochs before this call)."""
        self.log_path = log_path if self.d.main else None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("".join(json.dumps(h) + "\n" for h in self.result.history))

    def train(self) -> FitResult:
        self.start = time.perf_counter() - self.elapsed
        p = self.pos
        done = sum(e for _, e in self.plan[: p.stage]) * self.per_epoch
        done += (p.epoch - 1) * self.per_epoch + p.batch
        anomaly = (
            torch.autograd.set_detect_anomaly(True)
            if self.rt.detect_anomaly
            else contextlib.nullcontext()
        )
        self.writer = ckpt.Writer(background=self.rt.cuda, resumed_from=self.source)
        synced = sync_bn.global_statistics(
            self.distiller, self.rt.sync_bn and self.d.active, self.rt.cuda
        )
        with ui.progress() as self.bar, anomaly, self.writer.finished_on_error():
            with stopping.deferred(), synced:
                total = sum(e for _, e in self.plan) * self.per_epoch
                self.task = self.bar.add_task(
                    self.desc, total=total, completed=done, rate="", stats=""
                )
                for index in range(self.pos.stage, len(self.plan)):
                    self.run_stage(index)
        return self.finish()

    def run_stage(self, index: int) -> None:
        name, epochs = self.plan[index]
        self.distiller.stage = name
        # A fresh optimizer and schedule per stage, as the multi-stage papers train.
        params = list(self.distiller.trainable_parameters())
        self.opt, self.sched = make_optimizer(params, self.cfg, epochs * self.per_epoch)
        resuming = self.saved is not None and index == self.pos.stage
        if resuming:
            assert self.saved is not None
            if (self.pos.epoch, self.pos.batch) != (1, 0):  # else: the stage's fresh optimizer
                self.opt.load_state_dict(self.saved["optimizer"])
                self.sched.load_state_dict(self.saved["scheduler"])
            self.stepper.scaler.load_state_dict(self.saved["scaler"])
            ckpt.set_rng_state(self.saved["rng"])
        self.label = f"{name} " if len(self.plan) > 1 else ""
        first = self.pos.epoch if resuming else 1
        for epoch in range(first, epochs + 1):
            skip = self.pos.batch if resuming and epoch == first else 0
            self.run_epoch(index, epoch, skip)

    def run_epoch(self, index: int, epoch: int, skip: int) -> None:
        name, epochs = self.plan[index]
        self.distiller.train()
        self.distiller.epoch = epoch
        log = LossLog(self.rt.cuda, self.sums if skip else {}, read=skip)
        key = index * 100_003 + epoch
        self.dataset.key = key
        loader = WorkerLoader(
            self.dataset,
            batch_sampler=epoch_batches(self.n, self.cfg.batch_size, self.seed, key, skip),  # type: ignore[arg-type]
            num_workers=self.rt.workers,
            pin_memory=self.rt.cuda,
            # Its own generator: creating an iterator must not draw from the global one,
            # whose state a checkpoint restores (dropout masks depend on it).
            generator=torch.Generator().manual_seed(key),
        )
        batches = skip
        for x, y, idx, cropped in loader:
            self.distiller.progress = ((epoch - 1) * self.per_epoch + batches) / (
                epochs * self.per_epoch
            )
            self.stepper.where = f"{name} epoch {epoch} step {batches + 1}"
            self.step(x, y, idx, cropped, key, log)
            batches += 1
            self.show(log, epoch, epochs, advance=1)
            self.maybe_stop_mid_epoch(_Position(index, epoch, batches), log)
        self.sums = log.flush()  # every step read (and guarded) before anything is saved
        self.end_epoch(index, epoch, batches, log)

    def step(
        self, x: Tensor, y: Tensor, idx: Tensor, cropped: Tensor, key: int, log: LossLog
    ) -> None:
        """One optimizer step on one batch."""
        rt = self.rt
        x = x.to(rt.device, non_blocking=True)
        # non_blocking: a plain copy of pinned memory waits for the GPU to finish
        idx = idx.to(rt.device, non_blocking=True)
        if self.augment is not None:
            x = self.augment(x, idx, key, cropped)
        if x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(rt.device, non_blocking=True)
        cached = self.teacher_cache[idx] if self.teacher_cache is not None else None
        self.distiller.logged.clear()
        terms = self.distiller.train_step(x, y, cached, self.opt)
        self.sched.step()
        self.seen += len(y) * self.d.world
        log.add({**terms, **self.distiller.logged}, self.stepper.where)

    def show(self, log: LossLog, epoch: int, epochs: int, advance: int = 0, val: str = "") -> None:
        rate = self.seen / (time.perf_counter() - self.start)
        shown = " ".join(f"{k}={v:.3f}" for k, v in log.means().items())
        stats = f"{self.label}ep {epoch}/{epochs} {shown}{val}"
        self.bar.update(self.task, advance=advance, rate=f"{rate:.0f} img/s", stats=stats)

    def maybe_stop_mid_epoch(self, at: _Position, log: LossLog) -> None:
        """Checkpoint every `checkpoint.every` steps, and stop here on a signal (stopping.py):
        this very position is what resumes. Epoch ends have their own checkpoint."""
        if at.batch == self.per_epoch:
            return
        stop = stopping.requested() if stopping.due(at.batch, self.rt.cuda) else 0
        every = self.checkpoint.every if self.checkpoint else 0
        if self.checkpoint and (stop or (every and at.batch % every == 0)):
            self.save(at.as_dict(), log.flush())
        if stop:
            self.writer.wait()
            where = f"in {self.desc} after {self.label}epoch {at.epoch} step {at.batch}"
            raise Stopped(stop, where, saved=self.checkpoint is not None)

    def end_epoch(self, index: int, epoch: int, batches: int, log: LossLog) -> None:
        """Statistics, validation, the history line and the epoch's checkpoint; a stop asked
        for during the epoch ends training here, unless this was the last epoch (the stage
        then finishes first: api.py stops before the next one)."""
        name, epochs = self.plan[index]
        entry = self.history_entry(name, epoch, batches)
        self.result.history.append(entry)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        after = (index, epoch + 1) if epoch < epochs else (index + 1, 1)
        if self.checkpoint and after[0] < len(self.plan):
            self.save(_Position(*after).as_dict(), {}, reached="epoch")
        self.show(log, epoch, epochs, val=f" val={entry['val_accuracy']:.3f}")
        last = index == len(self.plan) - 1 and epoch == epochs
        stop = stopping.requested()  # every rank is here, at every epoch end
        if stop and not last:
            self.writer.wait()
            where = f"in {self.desc} after {self.label}epoch {epoch}"
            raise Stopped(stop, where, saved=self.checkpoint is not None)

    def history_entry(self, name: str, epoch: int, batches: int) -> dict:
        # BatchNorm that tracks slowly (MobileNetV3) or after depthwise convolutions
        # (MobileNetV2, EfficientNet) gets statistics that match its weights.
        recalibrated = precise_bn.recalibrate(
            self.distiller.students(),
            self.train_set,
            self.cfg.batch_size,
            self.rt.device,
            self.seed,
        )
        data_parallel.broadcast_state(dict(self.distiller.named_buffers()))
        val_acc = val_accuracy(self.distiller.student(), self.val, self.rt.workers)
        everyone = distributed.gather_objects(self.sums)
        means = {
            k: sum(s[k] / max(batches, 1) for s in everyone) / len(everyone) for k in self.sums
        }
        return {
            "stage": name,
            "epoch": epoch,
            **{f"loss_{k}": v for k, v in means.items()},
            "val_accuracy": val_acc,
            **({"bn_recalibrated_images": recalibrated} if recalibrated else {}),
            "lr": self.sched.get_last_lr()[0],
            "images_per_s": self.seen / (time.perf_counter() - self.start),
            "seconds": time.perf_counter() - self.start,
        }

    def save(
        self, position: dict[str, int], sums: dict[str, float], reached: str | None = None
    ) -> None:
        """Checkpoint the training state as it is now (rank 0 writes; see ckpt.Writer)."""
        if self.checkpoint is None or not self.d.main:
            return
        state = {
            **position,
            "model": ckpt.trainable_state(self.distiller),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.stepper.scaler.state_dict(),
            "rng": ckpt.rng_state(),
            "sums": sums,
            "seen": self.seen,
            "elapsed": time.perf_counter() - self.start,
            "history": self.result.history,
            "per_epoch": self.per_epoch,  # steps per epoch, and the processes that took them
            "world": self.d.world,
        }
        self.writer.submit(self.checkpoint, state, reached)

    def finish(self) -> FitResult:
        # Back to the CPU in the default layout: export and profiling start from there.
        self.distiller.to(torch.device("cpu"), memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        self.writer.wait()
        if self.checkpoint and self.d.main:
            ckpt.discard(self.checkpoint)  # the stage's outputs now stand for it
        r = self.result
        r.teacher_precision = self.rt.teacher_precision
        r.seconds = time.perf_counter() - self.start
        r.images = self.seen
        r.images_per_s = self.seen / max(r.seconds, 1e-9)
        r.val_accuracy = r.history[-1]["val_accuracy"] if r.history else 0.0
        return r
