"""ONNX FP32 -> INT8: static QDQ quantization, per-channel, S8S8, calibrated on real images.

`quant_pre_process` (shape inference + graph optimization) runs first, as onnxruntime
recommends; the calibration reader feeds batches of real *training* images. Nodes named in
`exclude` stay in float (the accuracy guard uses that, see guard.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

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

from kdpipe.export.onnx import INPUT_NAME
from kdpipe.runs import atomic_path

CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# The node types whose weights static quantization turns to int8.
QUANTIZABLE = ("Conv", "Gemm", "MatMul", "ConvTranspose")


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
) -> dict:
    """Write the QDQ INT8 model of the preprocessed `pre` at `out`; return the settings used."""
    reader.rewind()
    extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
    with atomic_path(out) as dst:
        quantize_static(
            str(pre),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION[method],
            nodes_to_exclude=list(exclude or []),
            extra_options=extra,
        )
    return {
        "format": "QDQ",
        "per_channel": True,
        "activations": "int8",
        "weights": "int8",
        "calibration": method,
        "calibration_samples": reader.samples,
        "kept_fp32": list(exclude or []),
    }
