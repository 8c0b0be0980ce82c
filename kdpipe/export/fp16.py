"""ONNX FP32 -> FP16 with float32 inputs and outputs kept (onnxconverter-common).

Weights and activations become float16 inside the graph; Cast nodes at the edges keep the
model's interface float32, so callers feed and read the same arrays as for FP32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from kdpipe.runs import atomic_path


def convert_fp16(fp32: Path, out: Path) -> dict:
    """Write the FP16 model of `fp32` at `out`; return the settings used."""
    model = onnx.load(str(fp32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values clipped to fp16 range
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    del half.metadata_props[:]
    half.metadata_props.extend(model.metadata_props)
    with atomic_path(out) as tmp:
        onnx.save(half, str(tmp))
    onnx.checker.check_model(str(out))
    return {"converter": "onnxconverter-common float16", "keep_io_types": True}
