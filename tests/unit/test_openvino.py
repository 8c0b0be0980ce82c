"""OpenVINO on the CPU: the exported files run there, in the precision it reports."""

from __future__ import annotations

import pytest
import torch

from kdpipe.runtimes import openvino
from kdpipe.runtimes.backends import Target, ov_runner

REASON = openvino.unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"OpenVINO unavailable: {REASON}"),
    pytest.mark.openvino,
]


def test_forced_f32_matches_pytorch_and_the_default_precision_is_reported(onnx_model) -> None:
    model, path = onnx_model
    x = torch.randn(5, 3, 32, 32)
    expected = model(x).detach()
    f32 = openvino.compile_file(path, threads=2, f32=True)
    assert openvino.inference_precision(f32) == "f32"
    assert torch.allclose(torch.from_numpy(f32(x.numpy())[0]), expected, atol=1e-3)
    default = openvino.OvPredict(path, threads=2)
    assert default.precision in ("bf16", "f32")
    runner = ov_runner(Target("student", "ov-cpu", "fp32"), path, threads=2)
    # A float file run in bf16 is a bf16 row: it is not the numeric form of the file.
    assert runner.target.precision == ("bf16" if default.precision == "bf16" else "fp32")
    diff = (default(x) - expected).abs().max()
    assert diff < (0.05 * expected.abs().max() if default.precision == "bf16" else 1e-3)
    # any batch size: the exported file's batch dimension is dynamic
    assert default(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_layer_times_name_each_layer_and_its_kernel(onnx_model) -> None:
    _, path = onnx_model
    counted = openvino.OvPredict(path, threads=2, counters=True)
    counted(torch.randn(1, 3, 32, 32))
    rows = counted.layer_times()
    assert rows and all(r["ms"] > 0 and r["kernel"] for r in rows)
    assert [r["ms"] for r in rows] == sorted((r["ms"] for r in rows), reverse=True)
    assert any(r["type"] == "Convolution" for r in rows)
