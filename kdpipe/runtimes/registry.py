"""Backends by name: each says whether it can run here and builds its runners for a model.

    @register_backend("ort-cpu")
    class OrtCpu(Backend): ...

The run's profile stage and `kdpipe profile` on files both ask `runners_of` for the runners
of every backend available here, in registration order (torch-cpu first: agreement with the
teacher is measured against it), and list the others with the reason they were skipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime as ort
import torch
from torch import nn

from kdpipe.core import ui
from kdpipe.core.errors import first_line
from kdpipe.runtimes import openvino, tensorrt
from kdpipe.runtimes.backends import (
    Runner,
    Target,
    ort_runner,
    ov_runner,
    tensorrt_predict,
    torch_predict,
)


@dataclass
class Model:
    """One model in the forms the backends take: a torch module (with its architecture and
    weights file, so that memory can be measured in a fresh process), ONNX files and TensorRT
    plans (or engines already loaded) by precision."""

    name: str  # teacher | student | a file's name
    module: nn.Module | None = None
    arch: str | None = None
    num_classes: int = 0
    weights: Path | None = None
    onnx: dict[str, Path] = field(default_factory=dict)
    onnx_bytes: dict[str, int] = field(default_factory=dict)  # with external data, where known
    plans: dict[str, Path | tensorrt.TensorRTRunner] = field(default_factory=dict)


class Backend(ABC):
    name: str

    @abstractmethod
    def unavailable(self) -> str | None:
        """Why this backend cannot run here (None: it can)."""

    @abstractmethod
    def runners(self, model: Model, threads: int, alone: bool = False) -> list[Runner]:
        """Its runners for the forms of `model` it takes (none for the others). `alone`: the
        runner is timed by itself, not interleaved with others."""


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    def register(cls: type[Backend]) -> type[Backend]:
        backend = cls()
        backend.name = name
        BACKENDS[name] = backend
        return cls

    return register


def runners_of(
    models: list[Model], threads: int, alone: bool = False
) -> tuple[list[Runner], list[dict]]:
    """Runners of every backend available here for `models`, and the skipped backends with
    their reasons."""
    runners: list[Runner] = []
    skipped: list[dict] = []
    for backend in BACKENDS.values():
        reason = backend.unavailable()
        if reason:
            skipped.append({"backend": backend.name, "reason": reason})
            continue
        for model in models:
            runners += backend.runners(model, threads, alone)
    return runners, skipped


class _Torch(Backend):
    device = "cpu"

    def runners(self, model: Model, threads: int, alone: bool = False) -> list[Runner]:
        if model.module is None or model.weights is None:
            return []
        spec = (
            {
                "kind": "torch",
                "arch": model.arch,
                "num_classes": model.num_classes,
                "weights": str(model.weights),
                "device": self.device,
                "threads": threads,
            }
            if model.arch
            else {}
        )
        clock: list[float] | None = [] if self.device == "cuda" else None
        predict = torch_predict(model.module, self.device, clock)
        size = model.weights.stat().st_size
        return [Runner(Target(model.name, self.name, "fp32"), predict, size, spec, clock)]


@register_backend("torch-cpu")
class TorchCpu(_Torch):
    def unavailable(self) -> str | None:
        return None


@register_backend("torch-cuda")
class TorchCuda(_Torch):
    device = "cuda"

    def unavailable(self) -> str | None:
        return None if torch.cuda.is_available() else "no CUDA GPU is visible"


class _Ort(Backend):
    provider = "CPUExecutionProvider"

    def unavailable(self) -> str | None:
        if self.provider not in ort.get_available_providers():
            why = f"onnxruntime {ort.__version__} has no {self.provider}"
        elif self.provider != "CPUExecutionProvider" and not torch.cuda.is_available():
            why = "no CUDA GPU is visible"
        else:
            return None
        return f"{why} (pip install 'kdpipe[gpu]' on a GPU machine)"

    def runners(self, model: Model, threads: int, alone: bool = False) -> list[Runner]:
        return [
            ort_runner(
                Target(model.name, self.name, precision),
                path,
                threads,
                self.provider,
                alone,
                model.onnx_bytes.get(precision),
            )
            for precision, path in model.onnx.items()
        ]


@register_backend("ort-cpu")
class OrtCpu(_Ort):
    provider = "CPUExecutionProvider"


@register_backend("ort-cuda")
class OrtCuda(_Ort):
    provider = "CUDAExecutionProvider"


@register_backend("ort-tensorrt")
class OrtTensorrt(_Ort):
    provider = "TensorrtExecutionProvider"


@register_backend("ov-cpu")
class OvCpu(Backend):
    """OpenVINO on the CPU. A float file it runs in bf16 is a `bf16` row; beside the FP32
    file the FP16 one is then left out, since it would run as the same bf16 form."""

    def unavailable(self) -> str | None:
        return openvino.unavailable_reason()

    def runners(self, model: Model, threads: int, alone: bool = False) -> list[Runner]:
        out: list[Runner] = []
        # FP32 first: where it runs in bf16, the FP16 file would run as that same form
        for precision, path in sorted(model.onnx.items(), key=lambda kv: kv[0] != "fp32"):
            if precision == "fp16" and any(r.target.precision == "bf16" for r in out):
                continue
            target = Target(model.name, self.name, precision)
            try:
                out.append(ov_runner(target, path, threads, model.onnx_bytes.get(precision)))
            except RuntimeError as e:  # an operator OpenVINO lacks: the other backends go on
                ui.warn(f"OpenVINO cannot compile {path.name}: {first_line(e)}; not timed there")
        return out


@register_backend("tensorrt")
class TensorRT(Backend):
    def unavailable(self) -> str | None:
        return tensorrt.unavailable_reason()

    def runners(self, model: Model, threads: int, alone: bool = False) -> list[Runner]:
        out = []
        for precision, plan in model.plans.items():
            path = plan.path if isinstance(plan, tensorrt.TensorRTRunner) else plan
            if not path.is_file():
                continue
            clock: list[float] = []
            out.append(
                Runner(
                    Target(model.name, self.name, precision),
                    tensorrt_predict(plan, clock),
                    path.stat().st_size,
                    {"kind": "tensorrt", "path": str(path)},
                    clock,
                )
            )
        return out
