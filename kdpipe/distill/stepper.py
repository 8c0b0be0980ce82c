"""One optimizer update, the way every method makes it: autocast on CUDA, the NaN/Inf guard,
backward (through AMP's grad scaler when fp16), gradients averaged across ranks, step.

`Distiller.train_step` calls `Stepper.update`; DML calls it once per peer and the adversarial
discriminator once for its own optimizer, so all of them get the same guard and the same
gradient synchronization.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kdpipe.core import torchrun, ui
from kdpipe.core.config import RuntimeConfig
from kdpipe.core.errors import ConfigError, TrainingError
from kdpipe.distill import data_parallel
from kdpipe.parallel import distributed


def nonfinite_error(term: str, value: float, where: str) -> TrainingError:
    return TrainingError(
        f"loss term '{term}' became {value} at {where}",
        "lower --lr or the term's weight (--set), or rerun with --detect-anomaly; "
        "the last good checkpoint is kept",
    )


@dataclass
class Runtime:
    """Where and how to compute: device, mixed precision, loader settings, safety switches."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: torch.dtype | None = None  # bfloat16 / float16 on CUDA; None = full precision
    workers: int = 0
    detect_anomaly: bool = False
    compile: bool = False
    teacher_dtype: torch.dtype | None = None  # the teacher's inference precision; None = fp32
    sync_bn: bool = False  # BatchNorm over the global batch under torchrun (sync_bn.py)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def teacher_precision(self) -> str:
        """teacher_dtype's name as metrics.json records it."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.teacher_dtype, "fp32")  # type: ignore[arg-type]

    @classmethod
    def from_config(
        cls, rc: RuntimeConfig, workers: int | None, in_memory: bool = False
    ) -> Runtime:
        """The device and precision a run trains with; CUDA-only flags on a CPU are noted once
        and ignored. `workers`: DataLoader processes (None: `loader_workers` chooses; the data
        is `in_memory` or decoded per sample)."""

        cuda = torch.cuda.is_available() and rc.device != "cpu"
        if rc.device == "cuda" and not cuda:
            raise ConfigError("--device cuda but no CUDA device is available", "use --device cpu")
        teacher_dtype = teacher_precision(rc.teacher_precision, cuda)
        if rc.sync_bn and not distributed.current().active:
            ui.info("note: --sync-bn applies to runs on several processes (--nproc, torchrun)")
        if not cuda:
            ignored = [f for f, on in (("--compile", rc.compile), ("--amp", rc.amp)) if on]
            if ignored:
                ui.info(f"note: {' and '.join(ignored)} apply to CUDA runs; ignored on the CPU")
            return cls(
                torch.device("cpu"),
                None,
                loader_workers(workers, False, in_memory),
                rc.detect_anomaly,
                False,
                teacher_dtype,
                sync_bn=rc.sync_bn,
            )
        d = distributed.current()
        if d.local_rank >= torch.cuda.device_count():  # torchrun --nproc-per-node > GPUs
            raise ConfigError(
                f"process {d.local_rank} of this machine has no GPU of its own "
                f"({torch.cuda.device_count()} here)",
                "start at most one process per GPU (--nproc-per-node), or use --device cpu",
            )
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
        amp = amp_dtype(rc, cuda)
        return cls(
            device,
            amp,
            loader_workers(workers, True, in_memory),
            rc.detect_anomaly,
            rc.compile,
            teacher_dtype,
            sync_bn=rc.sync_bn,
        )


def loader_workers(asked: int | None, cuda: bool, in_memory: bool) -> int:
    """DataLoader worker processes per training process: `asked` (data.workers), else none on
    the CPU (the training threads use every core; a worker would take one from them) or for
    tensors in memory (loading is an index), else, on a GPU where each image is decoded and
    resized per sample, the cores this process may use (split among torchrun's processes on
    this machine) less the one that drives the GPU, at least 1 and at most 8: one process
    decoding a 224 px JPEG takes ~4 ms, so a batch of 256 took a second between GPU steps."""
    if asked is not None:
        return asked
    if not cuda or in_memory:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    per_process = (cores or 1) // max(1, torchrun.local_world_size())
    return max(1, min(8, per_process - 1))


def amp_dtype(rc: RuntimeConfig, cuda: bool) -> torch.dtype | None:
    """What the student trains in: bf16 (fp16 where a GPU lacks it) under AMP on CUDA, else
    full precision (None). AMP is on by default on CUDA and never on the CPU."""
    if not cuda or rc.amp is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def training_numerics(rc: RuntimeConfig, with_teacher: bool = False) -> dict[str, str]:
    """The runtime choices that change what training computes, resolved for this machine, as
    a part of a training stage's fingerprint: a rerun with another --teacher-precision, --amp
    or --compile trains again instead of reusing a student made another way (the result would
    say one precision and be another's). Full-precision choices are left out, so a CPU run's
    teacher keeps the fingerprint, and the cache entry, it had before these were kept.
    `with_teacher`: the teacher's inference precision too (the distillation stage's)."""
    cuda = torch.cuda.is_available() and rc.device != "cpu"
    out = {}
    amp = amp_dtype(rc, cuda)
    if amp is not None:
        out["amp"] = str(amp).removeprefix("torch.")
    if cuda and rc.compile:
        out["compile"] = "on"
    if rc.sync_bn:
        out["sync_bn"] = "on"
    if with_teacher:
        teacher = teacher_precision(rc.teacher_precision, cuda)
        out["teacher"] = str(teacher).removeprefix("torch.") if teacher else "float32"
    return out


def autocast_to(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device_type`; no context at all for None (full precision)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Elsewhere oneDNN
    emulates it and a bf16 teacher is slower than fp32. (torch.cpu's probes are private; a
    torch without them counts as no.)"""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def teacher_precision(choice: str, cuda: bool) -> torch.dtype | None:
    """The dtype the teacher's inference autocasts to (None: full precision). A teacher only
    infers, so half precision costs no gradient scaling; its outputs are cast back to fp32.
    Measured on a 2-core AVX512-BF16 CPU: resnet50 at batch 128, 32 px, 164 ms fp32 vs 88 ms
    bf16 (docs/benchmarks.md)."""
    if choice == "fp32":
        return None
    if choice == "fp16":
        if not cuda:
            raise ConfigError(
                "--teacher-precision fp16 needs a CUDA device", "use bf16 or fp32 on the CPU"
            )
        return torch.float16
    if choice == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ConfigError("this GPU has no bf16", "use --teacher-precision fp16 or fp32")
        return torch.bfloat16
    if cuda:  # auto
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


class Stepper:
    """backward + gradient averaging + optimizer step, with the NaN guard and AMP's scaler.
    Distiller.train_step calls `update`; DML calls it once per peer, the adversarial
    discriminator once for its own optimizer."""

    def __init__(self, runtime: Runtime | None = None) -> None:
        runtime = runtime or Runtime()
        self.runtime = runtime
        use_scaler = runtime.amp == torch.float16
        # on the device trained on: a CUDA run's, or the CPU's in the tests of this fp16 path
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=use_scaler)
        self.where = "a training step"  # set by the trainer: stage, epoch and step

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast_to(self.runtime.device.type, self.runtime.amp)

    def teacher_autocast(self) -> contextlib.AbstractContextManager:
        """The teacher's forward without gradients, in the run's teacher precision."""
        return autocast_to(self.runtime.device.type, self.runtime.teacher_dtype)

    def check(self, terms: dict[str, Tensor]) -> None:
        """Before backward, on the CPU. On CUDA the check reads the values after the step
        (kdpipe.distill.losslog): reading them here would stall the GPU every step."""
        if self.runtime.cuda:
            return
        names = list(terms)
        bad = [k for k in names if not bool(torch.isfinite(terms[k].detach()).all())]
        d = distributed.current()
        if not d.active:
            if bad:
                raise nonfinite_error(bad[0], float(terms[bad[0]].detach()), self.where)
            return
        # Under torchrun every rank learns of a bad term on any rank, so all stop here
        # together (a lone rank stopping left the others in the next all-reduce until gloo
        # found its peer gone: "internal error: Connection closed by peer").
        kinds = [float("nan"), float("inf"), float("-inf")]
        value = float(terms[bad[0]].detach()) if bad else 0.0
        kind = (1 if math.isnan(value) else 2 if value > 0 else 3) if bad else 0
        mine = torch.tensor([names.index(bad[0]) + 1 if bad else 0, d.rank + 1 if bad else 0, kind])
        worst = distributed.max_over_ranks(mine)
        if worst[0]:
            term, rank = names[int(worst[0]) - 1], int(worst[1]) - 1
            shown = kinds[int(worst[2]) - 1]
            error = nonfinite_error(term, shown, f"{self.where} on rank {rank}")
            error.everywhere = True
            raise error

    def update(self, loss: Tensor, opt: torch.optim.Optimizer, terms: dict[str, Tensor]) -> None:
        self.check(terms)
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        data_parallel.average_gradients(p for group in opt.param_groups for p in group["params"])
        self.scaler.step(opt)
        self.scaler.update()
