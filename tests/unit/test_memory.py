"""Memory per backend: fresh child processes, measured side by side, results in spec order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from kdpipe.profile.memory import measure_all


def _matmul_onnx(path: Path, hidden: int) -> Path:
    """input (N, 3, 16, 16) -> flatten -> (768 x hidden) weights: hidden sets the file size."""
    weights = numpy_helper.from_array(np.ones((768, hidden), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["out"]),
        ],
        "m",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", hidden])],
        [weights],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_children_report_their_own_model_in_order(tmp_path: Path) -> None:
    # ~49 MB of weights against ~50 KB: each child's growth is its own model's, side by side.
    big = _matmul_onnx(tmp_path / "big.onnx", 16_000)
    small = _matmul_onnx(tmp_path / "small.onnx", 16)
    specs = [
        {"kind": "ort", "path": str(p), "shape": [1, 3, 16, 16]}
        for p in (big, small, tmp_path / "missing.onnx")
    ]
    got = measure_all(specs)
    assert len(got) == 3
    assert got[0]["peak_rss_over_baseline_bytes"] > 40e6
    assert got[1]["peak_rss_over_baseline_bytes"] < 20e6
    assert "NO_SUCHFILE" in got[2]["error"] and "peak_rss_over_baseline_bytes" not in got[2]
