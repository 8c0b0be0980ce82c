"""ONNX FP32 -> INT8: static QDQ quantization, per-channel, S8S8, calibrated on real images.

`quant_pre_process` (shape inference + graph optimization) runs first, as onnxruntime
recommends; the calibration reader feeds batches of real *training* images.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
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


class ImageBatches(CalibrationDataReader):
    """Feeds `samples` images from `dataset` in batches, as onnxruntime's calibrator expects."""

    def __init__(self, dataset: Dataset, samples: int, seed: int, batch_size: int = 32) -> None:
        n = min(samples, len(dataset))  # type: ignore[arg-type]
        idx = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]  # type: ignore[arg-type]
        loader = DataLoader(Subset(dataset, idx.tolist()), batch_size=batch_size)
        self._batches = [x.numpy().astype(np.float32) for x, _ in loader]
        self._it = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(self._batches)


def quantize_int8(fp32: Path, out: Path, calibration: Dataset, samples: int, seed: int) -> dict:
    """Write the QDQ INT8 model of `fp32` at `out`; return the settings used."""
    logging.getLogger("root").setLevel(logging.ERROR)  # onnxruntime logs hints at WARNING
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        reader = ImageBatches(calibration, samples, seed)
        with atomic_path(out) as dst:
            quantize_static(
                str(pre),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    return {
        "format": "QDQ",
        "per_channel": True,
        "activations": "int8",
        "weights": "int8",
        "calibration": "minmax",
        "calibration_samples": min(samples, len(calibration)),  # type: ignore[arg-type]
    }
