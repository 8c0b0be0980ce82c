"""onnxruntime on the CPU (or a GPU provider): sessions and logits over a dataset. The
input and output names every kdpipe-exported ONNX file uses are defined here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdpipe.core.errors import ExportError, first_line

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def ort_session(
    path: Path,
    threads: int | None = None,
    spin: bool = True,
    provider: str = "CPUExecutionProvider",
) -> ort.InferenceSession:
    """A CPU session. `spin=False` stops the worker threads' busy-waiting as soon as a call
    returns (they still spin inside it, between the operators of one call), so they do not
    steal cores from whatever runs next (the profiler interleaves runtimes). Turning spinning
    off altogether cost the student ~40 % of its p50 at 2 threads; see docs/benchmarks.md."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.force_spinning_stop", "1")
    try:
        return ort.InferenceSession(str(path), opts, providers=[provider])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = first_line(e)
        raise ExportError(
            f"onnxruntime cannot load {path}: {first}", "re-export the model"
        ) from None


def ort_logits(
    session: ort.InferenceSession, dataset: Dataset, batch_size: int = 128
) -> tuple[Tensor, Tensor]:
    out, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size):
        out.append(
            torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy().astype(np.float32)})[0])
        )
        labels.append(y)
    return torch.cat(out), torch.cat(labels)
