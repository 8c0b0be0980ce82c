"""Where one call goes, by operator and precision, on onnxruntime and OpenVINO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from kdpipe.data.splits import DataInfo
from kdpipe.export.onnx import export_onnx
from kdpipe.export.quantize import ImageBatches, preprocess, quantize_int8
from kdpipe.models import create
from kdpipe.profile.layers import SHOWN, onnxruntime_layers, openvino_layers
from kdpipe.runtimes import openvino

INFO = DataInfo("synthetic", [str(i) for i in range(10)], (3, 32, 32), [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("layers")
    fp32, pre, int8 = folder / "m.onnx", folder / "pre.onnx", folder / "m.int8.onnx"
    export_onnx(create("resnet18", 10).eval(), INFO, fp32)
    preprocess(fp32, pre)
    data = TensorDataset(torch.randn(64, 3, 32, 32), torch.zeros(64, dtype=torch.long))
    quantize_int8(pre, int8, ImageBatches(data, samples=32, seed=0))
    return {"fp32": fp32, "int8": int8}


def _check_shape(rows: list[dict]) -> None:
    assert 0 < len(rows) <= SHOWN
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert all(r["ms"] > 0 and 0 < r["share"] <= 1 and r["nodes"] >= 1 for r in rows)
    assert sum(r["share"] for r in rows) <= 1 + 1e-9


def test_onnxruntime_names_the_integer_kernels_and_the_conversions(files) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    fp32 = onnxruntime_layers(files["fp32"], x, threads=2)
    _check_shape(fp32)
    assert {r["precision"] for r in fp32} == {"fp32"}
    assert fp32[0]["op"] == "Conv" and fp32[0]["nodes"] >= 17  # resnet18: 20 convolutions
    int8 = onnxruntime_layers(files["int8"], x, threads=2)
    _check_shape(int8)
    by_op = {(r["op"], r["precision"]) for r in int8}
    assert ("QLinearConv", "int8") in by_op and ("QuantizeLinear", "convert") in by_op


@pytest.mark.openvino
@pytest.mark.skipif(openvino.unavailable_reason() is not None, reason="OpenVINO unavailable")
def test_openvino_counters_say_which_convolutions_ran_in_int8(files) -> None:
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    int8 = openvino_layers(files["int8"], x, threads=2)
    _check_shape(int8)
    assert any(r["op"] == "Convolution" and r["precision"] == "int8" for r in int8)
    fp32 = openvino_layers(files["fp32"], x, threads=2)
    assert not any(r["precision"] == "int8" for r in fp32)
