"""ONNX -> TensorRT engine, and a runner the profiler can use. Needs TensorRT and a CUDA GPU.

The network is *strongly typed*: precision comes from the ONNX itself (FP32, FP16 casts, or
QDQ for INT8), because TensorRT 10.12+ deprecates, and 11 removes, builder precision flags
and INT8 calibrators. One optimization profile covers the batch range; the timing cache is
kept on disk so rebuilds are fast; engine metadata (TensorRT version, GPU, precision,
shapes) is written beside the `.plan`. Device buffers are torch CUDA tensors (no pycuda).

Where TensorRT or CUDA is missing, `unavailable_reason()` says which and how to get it;
callers skip with that line. Nothing here is ever faked.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kdpipe.errors import BackendUnavailable, ExportError
from kdpipe.export.onnx import INPUT_NAME, OUTPUT_NAME
from kdpipe.runs import atomic_path, write_json


def unavailable_reason() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    try:
        import tensorrt as trt
    except ImportError:
        return (
            "TensorRT is not installed (pip install 'kdpipe[gpu]' on a machine with an NVIDIA GPU)"
        )
    # The type stubs alone leave an empty namespace package named tensorrt.
    if not hasattr(trt, "Builder"):
        return "only TensorRT's type stubs are installed, not TensorRT (pip install tensorrt)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (TensorRT needs an NVIDIA GPU and driver)"
    return None


def _require() -> None:
    reason = unavailable_reason()
    if reason:
        raise BackendUnavailable(reason, "TensorRT steps are skipped on machines without it")


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    input_chw: tuple[int, int, int],
    batch_range: list[int],
    precision: str,
    timing_cache: Path,
) -> dict:
    """Build a serialized engine for `onnx_path` at `plan_path`; return its metadata."""
    _require()
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}", "")
    lo, opt, hi = (batch_range + batch_range[-1:] * 2)[:3] if len(batch_range) < 3 else batch_range
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (lo, *input_chw), (opt, *input_chw), (hi, *input_chw))
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT failed to build an engine from {onnx_path.name}", "see the log above"
        )
    with atomic_path(plan_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    with atomic_path(timing_cache) as tmp:
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    meta = {
        "plan": plan_path.name,
        "onnx": onnx_path.name,
        "precision": precision,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": list(torch.cuda.get_device_capability(0)),
        "input": {
            "name": INPUT_NAME,
            "min": [lo, *input_chw],
            "opt": [opt, *input_chw],
            "max": [hi, *input_chw],
        },
        "strongly_typed": True,
        "build_seconds": time.perf_counter() - start,
    }
    write_json(plan_path.with_suffix(".json"), meta)
    return meta


class TensorRTRunner:
    """Runs a `.plan` on torch CUDA tensors: `runner(x)` -> logits tensor on the GPU."""

    def __init__(self, plan_path: Path) -> None:
        _require()
        import tensorrt as trt
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT cannot load {plan_path}", "rebuild it on this GPU and TensorRT version"
            )
        self.context = self.engine.create_execution_context()
        self.metadata = json.loads(plan_path.with_suffix(".json").read_text())
        self.device_memory_bytes = int(self.engine.device_memory_size_v2)

    def __call__(self, x: Any) -> Any:
        torch = self._torch
        x = x.contiguous().to("cuda", torch.float32, non_blocking=True)
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(OUTPUT_NAME))
        out = torch.empty(out_shape, dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed", "")
        return out
