"""The report's export table lists the TensorRT form of INT8 beside the onnxruntime one."""

from __future__ import annotations

import pytest

from kdpipe.report.markdown import export_rows


def _entry(file: str, accuracy: float, drop: float | None = None) -> dict:
    e = {"file": file, "size_bytes": 1, "parity": {"accuracy": accuracy}}
    return e if drop is None else {**e, "accuracy_drop_vs_fp32": drop}


def test_tensorrt_form_gets_its_own_row_and_drop() -> None:
    export = {
        "fp32": _entry("student.onnx", 0.98, 0.0),
        "int8": {
            **_entry("student.int8.onnx", 0.97, 0.01),
            "tensorrt_onnx": _entry("student.int8.tensorrt.onnx", 0.95),
        },
    }
    rows = export_rows(export)
    assert [label for label, _, _ in rows] == ["fp32", "int8", "int8 (for TensorRT)"]
    assert rows[2][1]["file"] == "student.int8.tensorrt.onnx"
    assert rows[2][2] == pytest.approx(0.03)
