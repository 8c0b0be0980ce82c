"""PyTorch -> ONNX: one self-contained file with a dynamic batch axis, checked by onnx.checker.

Uses the dynamo exporter (`torch.onnx.export(dynamo=True)`); falls back to the TorchScript
exporter only if dynamo fails, and says why. Input/preprocessing facts go into the ONNX
`metadata_props` so the file alone tells a device team how to feed it.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import onnx
import torch
from torch import nn

from kdpipe import __version__
from kdpipe.core import ui
from kdpipe.core.errors import ExportError, first_line
from kdpipe.core.runs import atomic_path
from kdpipe.data.splits import DataInfo
from kdpipe.runtimes.ort import INPUT_NAME, OUTPUT_NAME


def export_onnx(model: nn.Module, info: DataInfo, path: Path, opset: int | None = None) -> dict:
    """Write `model` as ONNX at `path`; return how it was exported."""
    model = model.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    example = torch.randn(2, *info.input_size)  # batch >= 2 so the batch axis stays symbolic
    exporter = "dynamo"
    with atomic_path(path) as tmp:
        try:
            _export_dynamo(model, example, tmp, opset)
        except Exception as e:  # the dynamo exporter raises many types; the fallback is logged
            reason = first_line(e)
            ui.warn(f"dynamo ONNX export failed ({reason}); using the TorchScript exporter")
            exporter = "torchscript"
            _export_torchscript(model, example, tmp, opset)
        proto = onnx.load(str(tmp))
        _add_metadata(proto, info)
        onnx.save(proto, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as e:
            raise ExportError(
                f"exported ONNX fails onnx.checker: {str(e).splitlines()[0]}", ""
            ) from None
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"exporter": exporter, "opset": opset_used, "input": INPUT_NAME, "output": OUTPUT_NAME}


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int | None) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )


def _export_torchscript(
    model: nn.Module, example: torch.Tensor, path: Path, opset: int | None
) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset or 17,
    )


def _add_metadata(proto: onnx.ModelProto, info: DataInfo) -> None:
    facts = {
        "kdpipe_version": __version__,
        "class_names": json.dumps(info.class_names),
        "input_shape": json.dumps(["batch", *info.input_size]),
        "layout": info.layout,
        "mean": json.dumps(info.mean),
        "std": json.dumps(info.std),
        "preprocessing": info.preprocessing,
        "dataset": info.name,
    }
    del proto.metadata_props[:]
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
