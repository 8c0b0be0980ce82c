"""`kdpipe profile` on ONNX files kdpipe did not write: whatever their input is called, a batch
fixed at 1, half-precision inputs, non-image shapes; and the ones it cannot time refused in
one line (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from kdpipe.core.errors import ConfigError
from kdpipe.stages.profile_files import Declared, _batch_sizes, _shape
from tests.e2e.helpers import kdpipe_here

QUICK = ["--min-iters", "10", "--min-seconds", "0.02", "--warmup", "1", "--no-memory", "--quiet"]


def _pool_model(path: Path, name: str, shape: list, elem: int = TensorProto.FLOAT) -> Path:
    """input -> (cast to the output type) -> global average pool -> flatten: logits = the
    per-channel means. Integer inputs are cast to float first."""
    out = elem if elem in (TensorProto.FLOAT, TensorProto.FLOAT16) else TensorProto.FLOAT
    nodes = [
        helper.make_node("Cast", [name], ["cast"], to=out),
        helper.make_node("GlobalAveragePool", ["cast"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info(name, elem, shape)],
        [helper.make_tensor_value_info("logits", out, shape[:2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _run_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "p.json"
    ran = kdpipe_here(capsys, "profile", *args, *QUICK, "--out", str(out))
    assert ran.returncode == 0, ran.stderr[-2000:]
    return json.loads(out.read_text())


def test_a_foreign_input_name_and_a_fixed_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixed = _pool_model(tmp_path / "hf.onnx", "pixel_values", [1, 3, 20, 12])
    r = _run_json(capsys, tmp_path, str(fixed), "--batch-sizes", "1,8")
    # batch 8 is dropped (the file fixes 1), the declared size is used, not 3x224x224
    assert {e["batch_size"] for e in r["latency"]} == {1}  # on every backend
    assert r["input_size"] == [3, 20, 12]
    ran = kdpipe_here(capsys, "profile", str(fixed), "--batch-sizes", "8", *QUICK)
    assert ran.returncode == 2
    assert "hf.onnx takes batch 1 only" in ran.stderr and "--batch-sizes 1" in ran.stderr
    ran = kdpipe_here(capsys, "profile", str(fixed), "--input-size", "3,32,32", *QUICK)
    assert ran.returncode == 2 and "takes input 3,20,12, not --input-size 3,32,32" in ran.stderr


def test_half_precision_inputs_and_non_image_shapes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    half = _pool_model(tmp_path / "half.onnx", "x", ["N", 4, "H", "W"], TensorProto.FLOAT16)
    r = _run_json(capsys, tmp_path, str(half), "--input-size", "4,6,6", "--batch-sizes", "2")
    assert r["input_size"] == [4, 6, 6] and r["latency"][0]["precision"] == "fp16"
    # symbolic H, W of an image input are filled from 224, C kept from the file
    r = _run_json(capsys, tmp_path, str(half), "--batch-sizes", "1")
    assert r["input_size"] == [4, 224, 224]
    seq = _pool_model(tmp_path / "seq.onnx", "tokens", ["N", 5, 7])  # (N, C, L): pooled over L
    r = _run_json(capsys, tmp_path, str(seq), "--batch-sizes", "1,3")
    assert r["input_size"] == [5, 7]
    assert [e["batch_size"] for e in r["latency"] if e["backend"] == "ort-cpu"] == [1, 3]


def test_models_it_cannot_feed_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    two = tmp_path / "two.onnx"
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["logits"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 3]) for n in "ab"],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(two))
    ids = _pool_model(tmp_path / "ids.onnx", "ids", ["N", 3, 4, 4], TensorProto.INT64)
    symbolic = _pool_model(tmp_path / "seq.onnx", "tokens", ["N", "C", "L"])
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text("{cut")
    for path, says in [
        (tmp_path / "bundle", "bundle.json is corrupt"),
        (two, "takes 2 inputs (a, b)"),
        (ids, "takes tensor(int64) input 'ids'"),
        (symbolic, "the input's size is not fixed (?,?)"),
    ]:
        ran = kdpipe_here(capsys, "profile", str(path), *QUICK)
        assert ran.returncode == 2 and says in ran.stderr, ran.stderr
        assert len(ran.stderr.strip().splitlines()) == 2  # error + hint, no traceback


def test_shape_and_batch_rules() -> None:
    assert _shape({}, None) == [3, 224, 224]
    assert _shape({"a": Declared((1, None, None))}, None) == [1, 224, 224]
    assert _shape({"a": Declared((3, None, None)), "b": Declared((3, 32, 32))}, None) == [3, 32, 32]
    with pytest.raises(ConfigError, match="different input sizes"):
        _shape({"a": Declared((3, 16, 16)), "b": Declared((3, 32, 32))}, None)
    with pytest.raises(ConfigError, match="different input sizes"):
        _shape({"a": Declared((10,)), "b": Declared((3, 32, 32))}, None)
    assert _shape({"a": Declared((3, None, None))}, [3, 9, 9]) == [3, 9, 9]
    assert _batch_sizes({"a": Declared((3,), None)}, [1, 32]) == [1, 32]
    assert _batch_sizes({"a": Declared((3,), (4, 4)), "b": Declared((3,))}, [1, 4, 32]) == [4]
    # a TensorRT engine takes its optimization profile's range
    assert _batch_sizes({"plan": Declared((3, 8, 8), (1, 16))}, [1, 8, 32]) == [1, 8]
    with pytest.raises(ConfigError, match="no batch size.*a takes batch 1 only"):
        _batch_sizes({"a": Declared((3,), (1, 1)), "b": Declared((3,), (2, 2))}, [1, 2])


def test_external_data_counts_in_the_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model saved with its weights beside it (as every ONNX file over 2 GB is) weighs
    the file plus its data, not the few kilobytes of the graph."""

    def raw(name: str, values: np.ndarray) -> TensorProto:  # raw bytes can live outside
        return helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.tobytes(), raw=True)

    weight = raw("w", np.linspace(0, 1, 4, dtype=np.float32).reshape(4, 1, 1))
    big = raw("pad", np.zeros(20_000, np.float32))  # unused by the graph, stored all the same
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["y"]),
        helper.make_node("GlobalAveragePool", ["y"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[weight, big],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="ext.data")
    r = _run_json(capsys, tmp_path, str(path), "--batch-sizes", "1")
    data = (tmp_path / "ext.data").stat().st_size
    assert data >= 80_000 and r["sizes"]["ext.ort-cpu.fp32"] == path.stat().st_size + data


def test_files_of_one_name_in_different_folders_are_told_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = []
    for folder in ("runs/a/export", "runs/b/export"):
        (tmp_path / folder).mkdir(parents=True)
        paths.append(_pool_model(tmp_path / folder / "student.onnx", "x", ["N", 3, 8, 8]))
    r = _run_json(capsys, tmp_path, *map(str, paths), "--batch-sizes", "1")
    assert {e["model"] for e in r["latency"]} == {"a/export/student", "b/export/student"}
