"""One runner per backend: a callable that runs a model once on a fixed input batch.

Backends here: `torch-cpu` (eager, inference mode) and `ort-cpu` (onnxruntime CPU provider).
Every backend gets the same input tensor; thread counts are fixed and recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdpipe.export.onnx import INPUT_NAME
from kdpipe.export.verify import ort_session


@dataclass(frozen=True)
class Target:
    """What is measured: which model, on which backend, in which precision."""

    model: str  # teacher | student
    backend: str  # torch-cpu | ort-cpu | ...
    precision: str  # fp32 | int8 | ...


def torch_runner(model: nn.Module, batch: torch.Tensor) -> Callable[[], object]:
    model.eval()

    def run() -> object:
        with torch.inference_mode():
            return model(batch)

    return run


def ort_runner(path: Path, batch: torch.Tensor, threads: int) -> Callable[[], object]:
    session = ort_session(path, threads, spin=False)
    feed = {INPUT_NAME: batch.numpy().astype(np.float32)}

    def run() -> object:
        return session.run(None, feed)

    return run
