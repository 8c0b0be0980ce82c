"""OpenVINO on the CPU: an exported ONNX file compiled for latency, as OpenVINO's makers advise
(PERFORMANCE_HINT LATENCY, the profile's thread count), called on numpy input.

On CPUs with AMX or AVX512-BF16, OpenVINO runs a float model in bfloat16 unless told
otherwise: a different numeric form from the file's, so `inference_precision` says what ran and
the profile reports such a row as `bf16`, with its own accuracy and parity.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

LATENCY = {"PERFORMANCE_HINT": "LATENCY"}


@cache
def unavailable_reason() -> str | None:
    """Why OpenVINO cannot run here (None: it can)."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino is not installed (pip install openvino)"
    try:
        if "CPU" not in ov.Core().available_devices:
            return f"OpenVINO {ov.__version__} finds no CPU device it supports here"
    except RuntimeError as e:
        return f"OpenVINO cannot start: {str(e).splitlines()[0]}"
    return None


def compile_file(path: Path, threads: int, counters: bool = False, f32: bool = False) -> Any:
    """The compiled model (openvino.CompiledModel); `counters`: per-layer timings kept;
    `f32`: float models run in float32 instead of the CPU's bf16 default."""
    import openvino as ov

    config: dict[str, object] = {**LATENCY, "INFERENCE_NUM_THREADS": threads}
    if counters:
        config["PERF_COUNT"] = True
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return ov.Core().compile_model(str(path), "CPU", config)


def inference_precision(compiled: Any) -> str:
    """What OpenVINO computes float layers in: bf16 or f32 (int8 layers stay int8)."""
    return str(compiled.get_property("INFERENCE_PRECISION_HINT").to_string())


class OvPredict:
    """One compiled model as a torch-in, torch-out call, with one infer request reused."""

    def __init__(self, path: Path, threads: int, counters: bool = False) -> None:
        self.compiled = compile_file(path, threads, counters)
        self.request = self.compiled.create_infer_request()
        self.precision = inference_precision(self.compiled)

    def __call__(self, x: Tensor) -> Tensor:
        self.request.infer({0: x.numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())

    def timed(self, x: Tensor) -> Callable[[], object]:
        """What an application's call costs: `infer` on a ready numpy array, the output left
        in OpenVINO's tensor (the copy out is the caller's choice)."""
        return partial(self.request.infer, {0: np.ascontiguousarray(x.numpy())})

    def layer_times(self) -> list[dict]:
        """The last call's layers by time (needs `counters`): name, type, kernel, ms."""
        rows = [
            {
                "layer": p.node_name,
                "type": p.node_type,
                "kernel": p.exec_type,
                "ms": p.real_time.total_seconds() * 1e3,
            }
            for p in self.request.get_profiling_info()
            if p.real_time.total_seconds() > 0
        ]
        return sorted(rows, key=lambda r: -r["ms"])
