"""`kdpipe profile TARGET...` outside a run: time any mix of models side by side.

A target is an ONNX file (`model.onnx`), a TensorRT plan (`model.plan`), a bundle folder
(every model in its bundle.json), or a PyTorch model as `ARCH:WEIGHTS` (`resnet18:s.pt`).
All are timed interleaved on the same random input with the run's methodology; memory is
measured per backend in a fresh process. (A run directory is re-profiled by `kdpipe.api`.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

from kdpipe import models, ui
from kdpipe.config import ProfileConfig, file_model, model_label
from kdpipe.errors import ConfigError, ExportError
from kdpipe.export import tensorrt
from kdpipe.profile import environment, memory
from kdpipe.profile.backends import (
    ORT_PROVIDERS,
    Runner,
    Target,
    ort_runner,
    tensorrt_predict,
    torch_predict,
)
from kdpipe.profile.stage import settings_record, time_runners


def _num_classes(state: dict[str, torch.Tensor]) -> int:
    """Outputs of the last 2-D weight: the classifier head of a torchvision model."""
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not heads:
        raise ConfigError(
            "cannot tell the number of classes from these weights", "pass an ONNX file instead"
        )
    return int(heads[-1].shape[0])


def _input_chw(graph: onnx.GraphProto) -> list[int] | None:
    """The (C, H, W) the graph's first input declares, or None where any of them is symbolic."""
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    chw = [d.dim_value if d.HasField("dim_value") else 0 for d in dims][1:]
    return chw if len(chw) == 3 and all(v > 0 for v in chw) else None


QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def onnx_precision(model: Path | onnx.GraphProto) -> str:
    """int8 for Q/DQ or integer-op graphs, fp16 where the weights are half, else fp32: read
    from the graph, since a user's file name need not say (`model_quant.onnx`)."""
    graph = model if isinstance(model, onnx.GraphProto) else _graph(model)
    ops = {n.op_type for n in graph.node}
    if ops & (QUANTIZED_OPS | INTEGER_OPS):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


def _graph(path: Path) -> onnx.GraphProto:
    return onnx.load(str(path), load_external_data=False).graph


def _onnx_runners(
    path: Path, name: str, threads: int, alone: bool = False
) -> tuple[list[Runner], list[int] | None]:
    """The file's runner on each onnxruntime backend here, and the input (C, H, W) it declares."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ExportError(f"{path} is not a valid ONNX model ({first})", "re-export it") from None
    graph = _graph(path)
    precision = onnx_precision(graph)
    out = []
    for backend, provider in ORT_PROVIDERS.items():
        if provider in ort.get_available_providers() and (
            backend == "ort-cpu" or torch.cuda.is_available()
        ):
            out.append(ort_runner(Target(name, backend, precision), path, threads, provider, alone))
    return out, _input_chw(graph)


def runners_for(
    target: str, threads: int, alone: bool = False
) -> tuple[list[Runner], list[int] | None]:
    """Runners for one CLI target, and the input shape it declares (C, H, W) if it does."""
    path = Path(target)
    if path.is_dir() and (path / "bundle.json").is_file():
        bundle = json.loads((path / "bundle.json").read_text())
        runners = []
        for entry in bundle["models"].values():
            runners += _onnx_runners(path / entry["file"], path.name or "bundle", threads)[0]
        return runners, bundle["input"]["shape"][1:]
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ConfigError(f"ONNX file {path} does not exist", "check the path")
        return _onnx_runners(path, path.stem.split(".")[0], threads, alone)
    if path.suffix == ".plan":
        reason = tensorrt.unavailable_reason()
        if reason:
            ui.info(f"profile: {path} skipped: {reason}")
            return [], None
        return [
            Runner(
                Target(path.stem, "tensorrt", "engine"),
                tensorrt_predict(path),
                path.stat().st_size,
                {"kind": "tensorrt", "path": str(path)},
            )
        ], None
    if file_model(target):
        raise ConfigError(f"cannot profile '{target}' without weights", f"pass {target}:WEIGHTS.pt")
    # ARCH:WEIGHTS, where ARCH may itself be path/to/file.py:Name
    arch, sep, weights = target.rpartition(":")
    if sep and arch and weights:
        state = models.load_state_dict_file(Path(weights))
        k = _num_classes(state)
        net = models.create(arch, k, weights).eval()
        spec = {
            "kind": "torch",
            "arch": arch,
            "num_classes": k,
            "weights": weights,
            "threads": threads,
        }
        out = [
            Runner(
                Target(model_label(arch), "torch-cpu", "fp32"),
                torch_predict(net, "cpu"),
                Path(weights).stat().st_size,
                {**spec, "device": "cpu"},
            )
        ]
        if torch.cuda.is_available():
            out.append(
                Runner(
                    Target(model_label(arch), "torch-cuda", "fp32"),
                    torch_predict(net, "cuda"),
                    Path(weights).stat().st_size,
                    {**spec, "device": "cuda"},
                )
            )
        return out, None
    raise ConfigError(
        f"cannot profile '{target}'",
        "pass a run directory, a bundle folder, a .onnx or .plan file, or ARCH:WEIGHTS.pt "
        "(ARCH: a torchvision name or path/to/file.py:Name)",
    )


def profile_targets(targets: list[str], p: ProfileConfig, input_size: list[int] | None) -> dict:
    threads = p.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    runners: list[Runner] = []
    declared_by: dict[str, list[int]] = {}
    # A lone ONNX file is timed like a plain loop: its threads may spin between calls.
    alone = len(targets) == 1 and Path(targets[0]).suffix == ".onnx"
    for t in targets:
        found, declared = runners_for(t, threads, alone=alone)
        runners += found
        if declared:
            declared_by[t] = list(declared)
    if input_size is None and len({tuple(v) for v in declared_by.values()}) > 1:
        sizes = ", ".join(f"{t} {','.join(map(str, v))}" for t, v in declared_by.items())
        raise ConfigError(
            f"the targets take different input sizes ({sizes})",
            "profile them separately, or pass --input-size for models that accept any size",
        )
    shape = input_size or next(iter(declared_by.values()), None)
    if not runners:
        raise ConfigError("nothing to profile here", "see the skipped targets above")
    names = [r.target for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError("two targets have the same name", "rename one of the files")
    chw = shape or [3, 224, 224]
    sample = torch.randn(max(p.batch_sizes), *chw, generator=torch.Generator().manual_seed(0))
    latency, samples = time_runners(runners, sample, p)
    mem = {}
    if p.memory:
        shape = [max(p.batch_sizes), *chw]
        measured = memory.measure_all([{**r.memory_spec, "shape": shape} for r in runners])
        for r, m in zip(runners, measured, strict=True):
            mem[f"{r.target.model}.{r.target.backend}.{r.target.precision}"] = m
    return {
        "input_size": chw,
        "latency": latency,
        "memory": mem,
        "sizes": {
            f"{r.target.model}.{r.target.backend}.{r.target.precision}": r.size_bytes
            for r in runners
        },
        "settings": settings_record(p, threads, alone),
        "environment": environment.describe(threads),
        "samples": samples,
    }
