"""ONNX export and INT8 quantization of a real torchvision model, checked against PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.utils.data import TensorDataset

from kdpipe.data.splits import DataInfo
from kdpipe.export.onnx import export_onnx
from kdpipe.export.quantize import ImageBatches, preprocess, quantize_int8
from kdpipe.export.verify import ort_logits, ort_session, parity
from kdpipe.models import create
from kdpipe.profile.accuracy import predict_logits

INFO = DataInfo("synthetic", [str(i) for i in range(10)], (3, 32, 32), [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[torch.nn.Module, Path, TensorDataset]:
    torch.manual_seed(0)
    model = create("resnet18", 10).eval()
    # Give BatchNorm non-trivial statistics so the check is not on a degenerate network.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32))
    model.eval()
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(model, INFO, path)
    data = TensorDataset(torch.randn(300, 3, 32, 32), torch.randint(0, 10, (300,)))
    return model, path, data


def test_fp32_matches_pytorch_on_every_batch_size(exported) -> None:
    model, path, data = exported
    onnx.checker.check_model(str(path), full_check=True)
    ref, labels = predict_logits(model, data)
    got, _ = ort_logits(ort_session(path), data, batch_size=37)  # odd batch: the axis is dynamic
    check = parity(ref, got, labels)
    assert check["samples"] == 300
    assert check["max_abs_diff"] <= 1e-4 * max(1.0, float(ref.abs().max()))
    assert check["top1_agreement"] == 1.0
    single = ort_session(path).run(None, {"input": data.tensors[0][:1].numpy()})[0]
    assert np.allclose(single, ref[:1].numpy(), atol=1e-4)


def test_metadata_travels_in_the_file(exported) -> None:
    _, path, _ = exported
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["class_names"]) == INFO.class_names
    assert json.loads(meta["mean"]) == [0.5] * 3 and meta["layout"] == "NCHW"
    assert len(list(path.parent.iterdir())) == 1  # one self-contained file, no external data


def test_int8_is_qdq_and_close_to_fp32(exported, tmp_path: Path) -> None:
    model, path, data = exported
    out, pre = tmp_path / "m.int8.onnx", tmp_path / "pre.onnx"
    preprocess(path, pre)
    settings = quantize_int8(pre, out, ImageBatches(data, samples=64, seed=0))
    assert settings["format"] == "QDQ" and settings["calibration_samples"] == 64
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert out.stat().st_size < path.stat().st_size / 2.5  # int8 weights
    ref, labels = predict_logits(model, data)
    got, _ = ort_logits(ort_session(out), data)
    assert parity(ref, got, labels)["top1_agreement"] >= 0.9
