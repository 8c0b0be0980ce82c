"""ONNX FP32 -> INT8: static QDQ quantization, per-channel weights, calibrated on real images.

The scheme follows the runtime that will run the file (`Int8Target`):

- `onnxruntime` (student.int8.onnx): uint8 activations (asymmetric), int8 weights. On x86,
  onnxruntime's CPU provider fuses this U8S8 form into QLinearConv/QLinearAdd throughout;
  with int8 activations (S8S8) it fused 9 of resnet18's 20 convs, left the rest in float
  between their Q/DQ nodes and ran 2x *slower* than FP32 (docs/benchmarks.md). On x86 CPUs
  without VNNI the weights use 7 bits (`reduce_range`), because the u8 x s8 instruction there
  (VPMADDUBSW) can saturate its 16-bit sums with full-range weights.
- `tensorrt` (the source of the INT8 engine): int8 activations and weights, both symmetric
  (zero point 0), and float biases: the only form TensorRT's ONNX parser accepts (its
  DequantizeLinear takes int8 with zero point 0, not the int32 of quantized biases).

`quant_pre_process` (shape inference + graph optimization) runs first, as onnxruntime
recommends; the calibration reader feeds batches of real *training* images. Nodes named in
`exclude` stay in float (the accuracy guard uses that, see guard.py).
"""

from __future__ import annotations

import inspect
import logging
import platform
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)
from torch.utils.data import DataLoader, Dataset, Subset

from kdpipe.core.runs import atomic_path
from kdpipe.runtimes.ort import INPUT_NAME

CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# The node types whose weights static quantization turns to int8.
QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")
CAN_REUSE_RANGES = "calibration_cache_path" in inspect.signature(quantize_static).parameters
Int8Target = Literal["onnxruntime", "tensorrt"]


def x86_without_vnni() -> bool:
    """An x86 CPU whose int8 dot products go through VPMADDUBSW (no AVX512-VNNI): 8-bit weights
    can saturate there. (torch.cpu's probe is private; a torch without it counts as VNNI.)"""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False
    return not bool(getattr(torch.cpu, "_is_vnni_supported", lambda: True)())


def int8_scheme(target: Int8Target, reduce_range: bool | None = None) -> dict:
    """The quantize_static settings for `target`; `reduce_range` None = decided by this CPU."""
    if target == "tensorrt":
        return {
            "activation_type": QuantType.QInt8,
            "weight_type": QuantType.QInt8,
            "reduce_range": False,
            # Biases stay float: TensorRT dequantizes int8 (and fp8/int4), not int32.
            "extra_options": {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
            },
        }
    return {
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "reduce_range": x86_without_vnni() if reduce_range is None else reduce_range,
        "extra_options": {"WeightSymmetric": True},
    }


class ImageBatches(CalibrationDataReader):
    """Feeds `samples` images from `dataset` in batches, as onnxruntime's calibrator expects."""

    def __init__(self, dataset: Dataset, samples: int, seed: int, batch_size: int = 32) -> None:
        n = min(samples, len(dataset))  # type: ignore[arg-type]
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(dataset), generator=gen)[:n]  # type: ignore[arg-type]
        loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size)
        self._batches = [x.numpy().astype(np.float32) for x, _ in loader]
        self._it = iter(self._batches)

    @property
    def samples(self) -> int:
        return sum(len(b) for b in self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def preprocess(fp32: Path, out: Path) -> None:
    """Shape inference and graph fusions before quantization (onnxruntime's recommendation)."""
    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime logs hints at WARNING
    quant_pre_process(str(fp32), str(out))


def quantizable_nodes(model_path: Path) -> list[str]:
    """Names of the nodes whose weights INT8 quantization would convert, in graph order."""
    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZABLE]


def quantize_int8(
    pre: Path,
    out: Path,
    reader: ImageBatches,
    method: str = "minmax",
    exclude: list[str] | None = None,
    target: Int8Target = "onnxruntime",
    reduce_range: bool | None = None,
    weight_layers_only: bool = False,
    ranges: Path | None = None,
) -> dict:
    """Write the QDQ INT8 model of the preprocessed `pre` at `out`; return the settings used.
    Every op onnxruntime can quantize is, unless `weight_layers_only` (QUANTIZABLE alone).
    `ranges`: a file that keeps the calibrated activation ranges, written by the first call
    and read by the next ones (the guard quantizes one model dozens of times; an onnxruntime
    without `calibration_cache_path` calibrates every time)."""
    reader.rewind()
    cache = {"calibration_cache_path": str(ranges)} if ranges and CAN_REUSE_RANGES else {}
    scheme = int8_scheme(target, reduce_range)
    extra = dict(scheme["extra_options"])
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    with atomic_path(out) as dst:
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=scheme["activation_type"],
            weight_type=scheme["weight_type"],
            reduce_range=scheme["reduce_range"],
            calibrate_method=CALIBRATION[method],
            nodes_to_exclude=list(exclude or []),
            op_types_to_quantize=list(QUANTIZABLE) if weight_layers_only else None,
            extra_options=extra,
            **cache,
        )
    symmetric = extra.get("ActivationSymmetric", False)
    return {
        "format": "QDQ",
        "target": target,
        "per_channel": True,
        "activations": ("int8" if scheme["activation_type"] == QuantType.QInt8 else "uint8")
        + (" symmetric" if symmetric else ""),
        "weights": "int8 symmetric" + (", 7-bit range" if scheme["reduce_range"] else ""),
        "calibration": method,
        "calibration_samples": reader.samples,
        "quantized_ops": "weight layers" if weight_layers_only else "all supported",
        "kept_fp32": list(exclude or []),
    }
