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
from kdpipe.export.quantize import ImageBatches, int8_scheme, preprocess, quantize_int8
from kdpipe.export.verify import parity
from kdpipe.models import create
from kdpipe.runtimes.accuracy import predict_logits
from kdpipe.runtimes.ort import ort_logits, ort_session
from kdpipe.stages.profile_files import onnx_precision

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
    # `kdpipe profile` labels a file by its graph, whatever it is named.
    assert onnx_precision(out) == "int8" and onnx_precision(path) == "fp32"
    ref, labels = predict_logits(model, data)
    got, _ = ort_logits(ort_session(out), data)
    assert parity(ref, got, labels)["top1_agreement"] >= 0.9


def test_calibrated_ranges_are_reused_across_exclusions(exported, tmp_path: Path) -> None:
    """The guard quantizes one model once per layer it ranks: the activation ranges are
    calibrated by the first call and read back by the others. A reader of blank images on the
    second call proves the file was read: the model equals one calibrated on the real data."""
    from kdpipe.export.quantize import CAN_REUSE_RANGES, quantizable_nodes

    if not CAN_REUSE_RANGES:
        pytest.skip("this onnxruntime has no calibration_cache_path")
    _, path, data = exported
    pre = tmp_path / "pre.onnx"
    preprocess(path, pre)
    first = quantizable_nodes(pre)[:1]
    blank = TensorDataset(torch.zeros(64, *INFO.input_size), torch.zeros(64, dtype=torch.long))
    ranges = tmp_path / "ranges.json"
    direct, cached, fresh = (tmp_path / f"{n}.onnx" for n in ("direct", "cached", "fresh"))
    quantize_int8(pre, direct, ImageBatches(data, 64, 0), exclude=first, weight_layers_only=True)
    quantize_int8(pre, tmp_path / "w.onnx", ImageBatches(data, 64, 0), weight_layers_only=True,
                  ranges=ranges)  # fmt: skip
    assert ranges.is_file()
    quantize_int8(pre, cached, ImageBatches(blank, 64, 0), exclude=first, weight_layers_only=True,
                  ranges=ranges)  # fmt: skip
    quantize_int8(pre, fresh, ImageBatches(blank, 64, 0), exclude=first, weight_layers_only=True)
    want, _ = ort_logits(ort_session(direct), data)
    assert torch.equal(ort_logits(ort_session(cached), data)[0], want)
    assert not torch.equal(ort_logits(ort_session(fresh), data)[0], want)


def test_weight_layers_only_leaves_the_weightless_ops_in_fp32(exported, tmp_path: Path) -> None:
    """The guard's second try: Conv/Gemm in INT8, the weightless ops in FP32 (Q/DQ is per
    tensor: an Add still reads the DQ'd tensor a conv reads, but resnet18's stem MaxPool,
    the only reader of its input, now reads FP32)."""
    _, path, data = exported
    pre = tmp_path / "pre.onnx"
    preprocess(path, pre)

    def dq_fed(out: Path, op: str) -> int:
        graph = onnx.load(str(out)).graph
        made_by = {o: n.op_type for n in graph.node for o in n.output}
        nodes = [n for n in graph.node if n.op_type == op]
        return sum(any(made_by.get(i) == "DequantizeLinear" for i in n.input) for n in nodes)

    full, layers = tmp_path / "full.onnx", tmp_path / "layers.onnx"
    assert quantize_int8(pre, full, ImageBatches(data, 64, 0))["quantized_ops"] == "all supported"
    s = quantize_int8(pre, layers, ImageBatches(data, 64, 0), weight_layers_only=True)
    assert s["quantized_ops"] == "weight layers"
    assert dq_fed(full, "MaxPool") == 1 and dq_fed(layers, "MaxPool") == 0
    assert dq_fed(layers, "Conv") == dq_fed(full, "Conv") > 0  # every conv still INT8


def _ort_optimized_ops(path: Path, tmp_path: Path) -> list[str]:
    """The node types onnxruntime's CPU provider actually runs after its graph fusions."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3  # the file is only read back here, not shipped
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


def test_int8_for_onnxruntime_runs_every_conv_in_integer_kernels(exported, tmp_path: Path) -> None:
    """uint8 activations let onnxruntime fuse each Q/DQ-wrapped conv into QLinearConv; int8
    activations left about half of them in float between Q/DQ nodes, 2x slower than FP32."""
    _, path, data = exported
    pre = tmp_path / "pre.onnx"
    preprocess(path, pre)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(pre)).graph.node)
    out = tmp_path / "ort.int8.onnx"
    settings = quantize_int8(pre, out, ImageBatches(data, samples=64, seed=0))
    assert settings["target"] == "onnxruntime" and settings["activations"] == "uint8"
    ops = _ort_optimized_ops(out, tmp_path)
    assert ops.count("QLinearConv") == convs == 20 and "Conv" not in ops
    # The S8S8 form this replaced really does fall back to float convs on this provider.
    s8 = tmp_path / "s8.int8.onnx"
    quantize_int8(pre, s8, ImageBatches(data, samples=64, seed=0), target="tensorrt")
    assert "Conv" in _ort_optimized_ops(s8, tmp_path)


def test_int8_for_tensorrt_is_symmetric_int8(exported, tmp_path: Path) -> None:
    """TensorRT accepts Q/DQ only with int8 and zero point 0, activations included."""
    model, path, data = exported
    pre, out = tmp_path / "pre.onnx", tmp_path / "trt.int8.onnx"
    preprocess(path, pre)
    settings = quantize_int8(pre, out, ImageBatches(data, samples=64, seed=0), target="tensorrt")
    assert settings["activations"] == "int8 symmetric"
    graph = onnx.load(str(out)).graph
    points = [t for t in graph.initializer if t.name.endswith("zero_point")]
    assert len(points) >= 40  # an activation and a weight zero point per conv at least
    dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert not any("bias" in name for name in dequantized)  # float biases
    for t in points:
        assert t.data_type == onnx.TensorProto.INT8
        assert not onnx.numpy_helper.to_array(t).any(), t.name
    ref, labels = predict_logits(model, data)
    got, _ = ort_logits(ort_session(out), data)
    assert parity(ref, got, labels)["top1_agreement"] >= 0.9


def test_reduce_range_only_where_asked_or_x86_without_vnni(monkeypatch) -> None:
    from kdpipe.export import quantize

    assert int8_scheme("onnxruntime", reduce_range=True)["reduce_range"] is True
    assert int8_scheme("tensorrt", reduce_range=True)["reduce_range"] is False
    monkeypatch.setattr(quantize.platform, "machine", lambda: "aarch64")
    assert int8_scheme("onnxruntime")["reduce_range"] is False
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(quantize.torch.cpu, "_is_vnni_supported", lambda: False, raising=False)
    assert int8_scheme("onnxruntime")["reduce_range"] is True
    monkeypatch.setattr(quantize.torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    assert int8_scheme("onnxruntime")["reduce_range"] is False


def test_fp16_of_a_constant_of_shape_graph_loads_and_matches(tmp_path: Path) -> None:
    """x + ConstantOfShape(Shape(x)) + 1: the converter alone retypes the constant's output
    to float16 but keeps a float32 value, which onnxruntime refuses (torchvision's swin_t),
    and casts the input x, read by two nodes, twice under one name."""
    from onnx import TensorProto, helper

    from kdpipe.export.fp16 import convert_fp16

    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("ConstantOfShape", ["shape"], ["zeros"]),
            helper.make_node("Add", ["x", "zeros"], ["sum"]),
            helper.make_node("Add", ["sum", "one"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])],
    )
    fp32 = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), fp32)
    settings = convert_fp16(fp32, tmp_path / "m16.onnx")
    assert settings["kept_fp32_ops"] == ["ConstantOfShape"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = ort_session(tmp_path / "m16.onnx").run(None, {"x": x})
    assert y.dtype == np.float32 and np.allclose(y, x + 1)
