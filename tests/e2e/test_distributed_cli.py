"""`kdpipe run --nproc 2`: torch's elastic launcher starts two gloo ranks that train together;
rank 0 alone writes the run directory and reports."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.helpers import kdpipe


def test_nproc_2_trains_on_two_ranks_and_writes_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "KDPIPE_CACHE": str(tmp_path / "cache")}
    proc = kdpipe(
        *("run", "--nproc", "2", "--teacher", "resnet18", "--student", "mobilenet_v3_small"),
        *("--image-size", "16", "--teacher-epochs", "1", "--epochs", "2", "--batch-size", "64"),
        *("--until", "export", "--precision", "fp32", "--out", str(out)),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("stopped after export") == 1  # rank 1 stays silent
    assert (out / "export" / "student.onnx").is_file()
    for stage in ("teacher", "distill"):
        assert (out / stage / "stage.json").is_file()
        assert len((out / stage / "log.jsonl").read_text().splitlines()) == (
            1 if stage == "teacher" else 2
        )
    metrics = json.loads((out / "distill" / "metrics.json").read_text())
    assert metrics["teacher_cache"] is True and metrics["history"][-1]["epoch"] == 2
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
