"""ONNX FP32 -> FP16 with float32 inputs and outputs kept (onnxconverter-common).

Weights and activations become float16 inside the graph; Cast nodes at the edges keep the
model's interface float32, so callers feed and read the same arrays as for FP32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from kdpipe.core.runs import atomic_path

# The converter retypes a ConstantOfShape output to float16 but leaves its value (default:
# float32 zero) as it is, which onnxruntime refuses to load (torchvision's swin_t, whose
# window padding builds one). Blocked ops stay FP32 with Casts around them.
OP_BLOCK_LIST = [*float16.DEFAULT_OP_BLOCK_LIST, "ConstantOfShape"]


def convert_fp16(fp32: Path, out: Path) -> dict:
    """Write the FP16 model of `fp32` at `out`; return the settings used."""
    model = onnx.load(str(fp32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values clipped to fp16 range
        half = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=OP_BLOCK_LIST
        )
    _drop_duplicate_nodes(half.graph)
    del half.metadata_props[:]
    half.metadata_props.extend(model.metadata_props)
    with atomic_path(out) as tmp:
        onnx.save(half, str(tmp))
    onnx.checker.check_model(str(out))
    return {
        "converter": "onnxconverter-common float16",
        "keep_io_types": True,
        "kept_fp32_ops": sorted({n.op_type for n in model.graph.node} & set(OP_BLOCK_LIST)),
    }


def _drop_duplicate_nodes(graph: onnx.GraphProto) -> None:
    """With keep_io_types the converter adds one identical input Cast per consumer of a graph
    input (a model that reads x.shape and convolves x), which breaks single assignment. The
    first copy comes before every consumer; the others are dropped."""
    seen: set[bytes] = set()
    keep = []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)
        if key not in seen:
            seen.add(key)
            keep.append(node)
    if len(keep) < len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
