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

from kdpipe.core.errors import BackendUnavailable, ConfigError, ExportError
from kdpipe.core.runs import atomic_path, write_json
from kdpipe.runtimes.ort import INPUT_NAME


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
        self.path = plan_path
        _require()
        import tensorrt as trt
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        # A plan may come from anyone (`kdpipe profile x.plan`): a version-compatible one can
        # embed a lean runtime, host code TensorRT would run. Never allowed here (TensorRT's
        # default, said so it stays so).
        self.runtime.engine_host_code_allowed = False
        self.engine = self.runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT cannot load {plan_path}", "rebuild it on this GPU and TensorRT version"
            )
        self.context = self.engine.create_execution_context()
        # kdpipe's own plans carry a metadata file; one built by trtexec or Polygraphy has none
        meta = plan_path.with_suffix(".json")
        self.metadata = json.loads(meta.read_text()) if meta.is_file() else {}
        self.device_memory_bytes = int(self.engine.device_memory_size_v2)
        # names and types from the engine itself: a user's plan need not say input/logits
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not outputs:
            raise ConfigError(
                f"{plan_path} has {len(inputs)} inputs and {len(outputs)} outputs; kdpipe runs "
                "image models with one input",
                "build the engine from a model with a single image input",
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = self._torch_dtype(self.input_name, plan_path)
        self.output_dtype = self._torch_dtype(self.output_name, plan_path)

    def input_dims(self) -> tuple[tuple[int | None, ...], tuple[int, int] | None]:
        """The engine's input dims after the batch (None where dynamic) and the batch sizes
        it takes (its first optimization profile's min and max), None if it says nothing."""
        shape = [int(d) for d in self.engine.get_tensor_shape(self.input_name)]
        dims = tuple(d if d > 0 else None for d in shape[1:])
        if shape and shape[0] > 0:
            return dims, (shape[0], shape[0])
        if self.engine.num_optimization_profiles < 1:
            return dims, None
        low, _, high = self.engine.get_tensor_profile_shape(self.input_name, 0)
        return dims, (int(low[0]), int(high[0]))

    def _torch_dtype(self, name: str, plan_path: Path) -> Any:
        import tensorrt as trt

        torch = self._torch
        dtypes = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.BF16: torch.bfloat16,
        }
        kind = self.engine.get_tensor_dtype(name)
        if kind not in dtypes:
            raise ConfigError(
                f"{plan_path}'s tensor '{name}' is {kind}; kdpipe feeds and reads float tensors",
                "build the engine with float input and output",
            )
        return dtypes[kind]

    def __call__(self, x: Any) -> Any:
        torch = self._torch
        x = x.contiguous().to("cuda", self.input_dtype, non_blocking=True)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(out_shape, dtype=self.output_dtype, device="cuda")
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT execution failed", "")
        return out
