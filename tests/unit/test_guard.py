"""FP16 conversion and the INT8 accuracy guard on a small real CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe.core.config import DataConfig
from kdpipe.data import load_data
from kdpipe.data.splits import DataInfo
from kdpipe.export.fp16 import convert_fp16
from kdpipe.export.guard import Calibration, quantize_with_guard
from kdpipe.export.onnx import export_onnx
from kdpipe.runtimes.ort import ort_logits, ort_session
from kdpipe.stages.profile_files import onnx_precision
from tests.e2e.helpers import stacked

INFO = DataInfo("synthetic", [str(i) for i in range(10)], (3, 16, 16), [0.0] * 3, [1.0] * 3)


def small_cnn() -> nn.Module:
    """A 4-conv CNN trained for a few seconds on 16x16 digits (~90 % accurate)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = [3, 16, 32, 32, 64]
    for i, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
        layers += [nn.Conv2d(cin, cout, 3, padding=1, stride=2 if i % 2 else 1), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    data = load_data(DataConfig(image_size=16), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = stacked(data.train)
    for _ in range(6):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    model = small_cnn()
    path = tmp_path_factory.mktemp("guard") / "m.onnx"
    export_onnx(model, INFO, path)
    return model, path


def test_fp16_keeps_float32_io_and_close_logits(fp32, tmp_path: Path) -> None:
    model, path = fp32
    out = tmp_path / "m.fp16.onnx"
    convert_fp16(path, out)
    session = ort_session(out)
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    inits = onnx.load(str(out)).graph.initializer
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in inits)
    assert onnx_precision(out) == "fp16"
    x = torch.randn(8, 3, 16, 16)
    got = session.run(None, {"input": x.numpy()})[0]
    ref = model(x).detach().numpy()
    assert np.abs(got - ref).max() < 1e-2 * max(1.0, np.abs(ref).max())
    meta = {p.key for p in onnx.load(str(out)).metadata_props}
    assert "class_names" in meta


def test_guard_keeps_sensitive_layers_in_fp32_until_within_limit(fp32, tmp_path: Path) -> None:
    model, path = fp32
    x = stacked(load_data(DataConfig(image_size=16), seed=0).val)[0]
    # Labels are the FP32 model's own predictions, so FP32 scores 100 % and any disagreement
    # of the INT8 model is an accuracy drop.
    with torch.no_grad():
        labels = model(x).argmax(1)
    assert len(labels.unique()) >= 8  # a real classifier, not a constant
    guard_set = TensorDataset(x, labels)
    # Two calibration images give activation ranges too narrow: all-INT8 drops ~24 points.
    calib = TensorDataset(x[:2], torch.zeros(2, dtype=torch.long))
    out = tmp_path / "m.int8.onnx"
    result = quantize_with_guard(
        path, out, Calibration(calib, "minmax", 2, 0), guard_set, max_drop=0.02
    )
    guard = result["guard"]
    assert guard["triggered"] and guard["drop_all_int8"] > 0
    kept = [k["node"] for k in guard["kept_fp32"]]
    assert 1 <= len(kept) < 5 and guard["final_drop"] <= 0.02
    assert guard["layers_ranked"] == 5  # 4 convs + the classifier
    assert result["kept_fp32"] == kept
    # The file really is that model: its accuracy on the guard set is within the limit.
    logits, _ = ort_logits(ort_session(out), guard_set)
    assert float((logits.argmax(1) == labels).float().mean()) >= 0.98
    graph = onnx.load(str(out)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)  # the rest stays INT8


def test_guard_does_nothing_when_within_limit(fp32, tmp_path: Path) -> None:
    model, path = fp32
    x = stacked(load_data(DataConfig(image_size=16), seed=0).val)[0]
    data = TensorDataset(x, model(x).argmax(1).detach())
    result = quantize_with_guard(
        path, tmp_path / "q.onnx", Calibration(data, "minmax", 64, 0), data, max_drop=1.0
    )
    assert not result["guard"]["triggered"] and result["guard"]["kept_fp32"] == []
