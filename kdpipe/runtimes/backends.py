"""Runners: images (CPU float32) in, logits (CPU) out, end to end, for torch eager,
onnxruntime sessions and TensorRT engines. GPU runners synchronize before returning, so a
timed call is the end-to-end time including the copies. Which backends exist and when they
can run: registry.py.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from kdpipe.runtimes import tensorrt
from kdpipe.runtimes.openvino import OvPredict
from kdpipe.runtimes.ort import ort_session
from kdpipe.runtimes.ort_input import read_input


@dataclass(frozen=True)
class Target:
    """What is measured: which model, on which backend, in which precision."""

    model: str  # teacher | student
    backend: str  # torch-cpu | torch-cuda | ort-cpu | ort-cuda | ort-tensorrt | ov-cpu | tensorrt
    precision: str  # fp32 | fp16 | int8 | bf16 (a float file OpenVINO runs in bfloat16)


@dataclass
class Runner:
    target: Target
    predict: Callable[[Tensor], Tensor]
    size_bytes: int
    # How kdpipe.profile.memory rebuilds this runner in a fresh process ({} = not measurable).
    memory_spec: dict = field(default_factory=dict)
    # GPU runners append each call's device time (CUDA events, ms) here.
    device_ms: list[float] | None = None
    # The call the profiler times for one input, where it can be leaner than `predict`
    # (None: `predict` itself).
    timed: Callable[[Tensor], Callable[[], object]] | None = None

    def timed_call(self, x: Tensor) -> Callable[[], object]:
        return self.timed(x) if self.timed is not None else partial(self.predict, x)


def _device_timed(fn: Callable[[Tensor], Tensor], clock: list[float]) -> Callable[[Tensor], Tensor]:
    """Wrap a GPU call with CUDA events: its device time (ms) is appended to `clock`."""

    def run(x: Tensor) -> Tensor:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn(x)
        end.record()
        end.synchronize()
        clock.append(start.elapsed_time(end))
        return out

    return run


def torch_predict(
    model: nn.Module, device: str, clock: list[float] | None = None
) -> Callable[[Tensor], Tensor]:
    net = model if device == "cpu" else copy.deepcopy(model).to(device)
    net.eval()

    def forward(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return net(x)

    timed = _device_timed(forward, clock) if clock is not None else forward

    def run(x: Tensor) -> Tensor:
        out = timed(x.to(device, non_blocking=True)).float()
        return out.cpu() if device != "cpu" else out  # .cpu() waits for the GPU

    return run


class OrtPredict:
    """One onnxruntime session as a torch-in, torch-out call. `spin=False` unless this session
    is timed alone: workers left spinning after a call steal the cores of whatever is timed
    next (teacher p95 doubled), so they stop when a call returns (see ort_session)."""

    def __init__(self, path: Path, threads: int, provider: str, spin: bool = False) -> None:
        self.session = ort_session(path, threads, spin=spin, provider=provider)
        self.on_cpu = provider == "CPUExecutionProvider"
        # names and element type from the file: a user's model need not say `input`
        self.input = read_input(self.session, str(path))
        self.output_name = self.session.get_outputs()[0].name

    def __call__(self, x: Tensor) -> Tensor:
        if self.on_cpu:
            return torch.from_numpy(self.session.run(None, self._feed(x))[0])
        # IO binding: input copied to the GPU once per call, output kept on the GPU until
        # the copy back, so onnxruntime does no hidden host round trips of its own.
        binding = self.session.io_binding()
        x_dev = ort.OrtValue.ortvalue_from_numpy(self.input.array(x.numpy()), "cuda", 0)
        binding.bind_ortvalue_input(self.input.name, x_dev)
        binding.bind_output(self.output_name, "cuda")
        self.session.run_with_iobinding(binding)
        return torch.from_numpy(binding.copy_outputs_to_cpu()[0])

    def timed(self, x: Tensor) -> Callable[[], object]:
        """What an application's call costs: on the CPU, `session.run` on a ready numpy feed,
        its output left as onnxruntime returns it. Wrapping each output in a torch tensor
        read ~5 % over a plain loop on a busy 2-vCPU VM.
        On a GPU the whole bound call, copies included (end-to-end time)."""
        if not self.on_cpu:
            return partial(self, x)
        return partial(self.session.run, None, self._feed(x))

    def _feed(self, x: Tensor) -> dict[str, np.ndarray]:
        return {self.input.name: self.input.array(x.numpy())}


def ort_runner(
    target: Target,
    path: Path,
    threads: int,
    provider: str,
    spin: bool = False,
    size_bytes: int | None = None,
) -> Runner:
    """`size_bytes`: the model's bytes on disk where the file alone is not all of them
    (weights kept as ONNX external data)."""
    predict = OrtPredict(path, threads, provider, spin)
    spec = {"kind": "ort", "path": str(path), "provider": provider, "threads": threads}
    size = path.stat().st_size if size_bytes is None else size_bytes
    return Runner(target, predict, size, spec, timed=predict.timed)


def ov_runner(target: Target, path: Path, threads: int, size_bytes: int | None = None) -> Runner:
    """OpenVINO's runner for one ONNX file; a float file it computes in bf16 is a bf16 target."""
    predict = OvPredict(path, threads)
    if target.precision in ("fp32", "fp16") and predict.precision == "bf16":
        target = Target(target.model, target.backend, "bf16")
    spec = {"kind": "ov", "path": str(path), "threads": threads}
    size = path.stat().st_size if size_bytes is None else size_bytes
    return Runner(target, predict, size, spec, timed=predict.timed)


def tensorrt_predict(
    plan: Path | tensorrt.TensorRTRunner, clock: list[float] | None = None
) -> Callable[[Tensor], Tensor]:
    runner = plan if isinstance(plan, tensorrt.TensorRTRunner) else tensorrt.TensorRTRunner(plan)
    timed = _device_timed(runner, clock) if clock is not None else runner

    def run(x: Tensor) -> Tensor:
        return timed(x.cuda(non_blocking=True)).float().cpu()

    return run
