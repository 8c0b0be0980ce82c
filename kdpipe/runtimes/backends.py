"""One runner per backend: images (CPU float32) in, logits (CPU) out, end to end.

Backends: `torch-cpu`, `torch-cuda` (eager, inference mode), `ort-cpu`, `ort-cuda`,
`ort-tensorrt` (onnxruntime's CPU / CUDA / TensorRT execution providers) and `tensorrt`
(engines built by the export stage). A GPU backend is used when its runtime and a device
exist; otherwise it is listed as skipped with the reason. GPU runners synchronize before
returning, so a timed call is the end-to-end time including the copies.
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
from kdpipe.runtimes.ort import ort_session
from kdpipe.runtimes.ort_input import read_input

ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}


@dataclass(frozen=True)
class Target:
    """What is measured: which model, on which backend, in which precision."""

    model: str  # teacher | student
    backend: str  # torch-cpu | torch-cuda | ort-cpu | ort-cuda | ort-tensorrt | tensorrt
    precision: str  # fp32 | fp16 | int8


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


def tensorrt_predict(
    plan: Path | tensorrt.TensorRTRunner, clock: list[float] | None = None
) -> Callable[[Tensor], Tensor]:
    runner = plan if isinstance(plan, tensorrt.TensorRTRunner) else tensorrt.TensorRTRunner(plan)
    timed = _device_timed(runner, clock) if clock is not None else runner

    def run(x: Tensor) -> Tensor:
        return timed(x.cuda(non_blocking=True)).float().cpu()

    return run


def build_runners(
    teacher: nn.Module,
    student: nn.Module,
    files: dict[str, Path],
    onnx_files: dict[str, Path],
    plans: dict[str, Path],
    threads: int,
    archs: dict[str, str] | None = None,
    num_classes: int = 0,
    teacher_onnx: Path | None = None,
) -> tuple[list[Runner], list[dict]]:
    """Runners for every backend available here, and the skipped ones with their reasons.
    `archs` (teacher/student architecture names) lets memory be measured for torch runners;
    `teacher_onnx` puts the teacher on each onnxruntime backend too (FP32). The teacher in
    torch-cpu comes first: agreement with the teacher is measured against it."""
    nets = {"teacher": teacher, "student": student}

    def torch_runner(who: str, device: str) -> Runner:
        spec = (
            {
                "kind": "torch",
                "arch": archs[who],
                "num_classes": num_classes,
                "weights": str(files[who]),
                "device": device,
                "threads": threads,
            }
            if archs
            else {}
        )
        clock: list[float] | None = [] if device == "cuda" else None
        return Runner(
            Target(who, f"torch-{device}", "fp32"),
            torch_predict(nets[who], device, clock),
            files[who].stat().st_size,
            spec,
            clock,
        )

    runners = [torch_runner("teacher", "cpu"), torch_runner("student", "cpu")]
    skipped: list[dict] = []
    cuda = torch.cuda.is_available()
    if cuda:
        runners += [torch_runner("teacher", "cuda"), torch_runner("student", "cuda")]
    else:
        skipped.append({"backend": "torch-cuda", "reason": "no CUDA GPU is visible"})
    available = ort.get_available_providers()
    for backend, provider in ORT_PROVIDERS.items():
        if provider not in available or (backend != "ort-cpu" and not cuda):
            why = (
                f"onnxruntime {ort.__version__} has no {provider}"
                if provider not in available
                else "no CUDA GPU is visible"
            )
            skipped.append(
                {
                    "backend": backend,
                    "reason": f"{why} (pip install 'kdpipe[gpu]' on a GPU machine)",
                }
            )
            continue
        ort_files = [("student", precision, path) for precision, path in onnx_files.items()]
        if teacher_onnx is not None:
            ort_files.insert(0, ("teacher", "fp32", teacher_onnx))
        for who, precision, path in ort_files:
            runners.append(ort_runner(Target(who, backend, precision), path, threads, provider))
    reason = tensorrt.unavailable_reason()
    if reason:
        skipped.append({"backend": "tensorrt", "reason": reason})
    for precision, plan in plans.items():
        if not reason and plan.is_file():
            spec = {"kind": "tensorrt", "path": str(plan)}
            clock: list[float] = []
            runners.append(
                Runner(
                    Target("student", "tensorrt", precision),
                    tensorrt_predict(plan, clock),
                    plan.stat().st_size,
                    spec,
                    clock,
                )
            )
    return runners, skipped
