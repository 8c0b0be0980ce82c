"""Fixtures several unit test modules share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdpipe.data.splits import DataInfo
from kdpipe.export.onnx import export_onnx
from kdpipe.models import create

INFO = DataInfo("synthetic", [str(i) for i in range(10)], (3, 32, 32), [0.5] * 3, [0.25] * 3)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A random-weight resnet18 for 10 classes at 32 px and its FP32 ONNX file."""
    torch.manual_seed(0)
    model = create("resnet18", 10).eval()
    path = tmp_path_factory.mktemp("onnx_model") / "m.onnx"
    export_onnx(model, INFO, path)
    return model, path
