"""`kdpipe export` on its own: from a weights file, and again from a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdpipe.core.runs import file_sha256
from tests.e2e.helpers import kdpipe_here


def test_export_from_weights_file(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    dest = tmp_path / "exp"
    proc = kdpipe_here(
        capsys,
        "export",
        "--arch",
        "mobilenet_v3_small",
        "--weights",
        str(out / "distill" / "student.pt"),
        "--precision",
        "fp32,fp16",
        "--out",
        str(dest),
        "--quiet",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((dest / "export.json").read_text())
    assert set(results) == {"fp32", "fp16"}
    assert results["fp32"]["parity"]["top1_agreement"] >= 0.999
    assert results["fp32"]["parity"]["max_abs_diff"] <= 1e-3
    assert results["fp16"]["parity"]["top1_agreement"] >= 0.99
    assert results["fp16"]["parity"]["samples"] == 360
    bundle = json.loads((dest / "bundle.json").read_text())
    assert bundle["models"]["fp16"]["sha256"] == file_sha256(dest / "student.fp16.onnx")
    assert "fp16" in proc.stdout and "bundle:" in proc.stdout


def test_export_for_tensorrt_writes_the_symmetric_int8_form(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without TensorRT the engine is skipped with its reason, but the file TensorRT needs
    (symmetric int8 Q/DQ) is still written, checked against PyTorch and reported."""
    import onnx

    out, _, env = first_run
    dest = tmp_path / "exp"
    args = ["--arch", "mobilenet_v3_small", "--weights", str(out / "distill" / "student.pt")]
    proc = kdpipe_here(
        capsys,
        "export", *args, "--precision", "int8", "--backend", "onnx,tensorrt", "--out", str(dest),
        env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    int8 = json.loads((dest / "export.json").read_text())["int8"]
    assert int8["quantization"]["activations"] == "uint8"
    trt = int8["tensorrt_onnx"]
    assert trt["file"] == "student.int8.tensorrt.onnx"
    assert trt["quantization"]["activations"] == "int8 symmetric"
    # The guard holds the drop to 1 pt on the validation split; on the test split (another
    # 360 images, a weak tiny student with small logit margins) allow sampling slack.
    parity = trt["parity"]
    assert parity["samples"] == 360 and parity["top1_agreement"] >= 0.85
    assert parity["accuracy"] >= parity["reference_accuracy"] - 0.03
    graph = onnx.load(str(dest / trt["file"])).graph
    points = [t for t in graph.initializer if t.name.endswith("zero_point")]
    assert points and not any(onnx.numpy_helper.to_array(t).any() for t in points)
    assert "skipped" in json.loads((dest / "tensorrt.json").read_text())
    assert "TensorRT skipped" in proc.stderr


def test_export_needs_a_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = kdpipe_here(capsys, "export", "--quiet")
    assert proc.returncode == 2 and "either a run directory" in proc.stderr
    proc = kdpipe_here(capsys, "export", str(tmp_path), "--quiet")
    assert proc.returncode == 2 and "not a kdpipe run directory" in proc.stderr
