"""`kdpipe run` with the user's own model files instead of torchvision names: trained,
distilled, exported and profiled (memory in a fresh subprocess, which must import the file
again). Retraining after an edit is tested on the fingerprints (tests/unit)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e.helpers import kdpipe_here

NETS = """
import torch
from torch import nn


def block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(), nn.MaxPool2d(2))


class Teacher(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 64))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class Student(nn.Module):
    def __init__(self):  # no num_classes: kdpipe resizes the last Linear
        super().__init__()
        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 32))
        self.fc = nn.Linear(32, 1000)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
"""

# Small plain CNNs need more steps than the zoo's tiny settings: 10 epochs here take the
# teacher to ~98 % and the student to ~97 % (about 15 s of training on 2 cores).
TINY = ["--teacher-epochs", "10", "--epochs", "10", "--lr", "0.01", "--batch-sizes", "1"]
TINY += ["--min-iters", "10", "--min-seconds", "0.05", "--quiet"]


def test_own_model_files_go_through_the_whole_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nets = tmp_path / "my models" / "nets.py"  # a space in the path, as users' folders have
    nets.parent.mkdir()
    nets.write_text(NETS)
    out = tmp_path / "run"
    env = {**os.environ, "KDPIPE_CACHE": str(tmp_path / "cache")}
    args = ["run", "--teacher", f"{nets}:Teacher", "--student", f"{nets}:Student", *TINY]
    proc = kdpipe_here(capsys, *args, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r = json.loads((out / "report.json").read_text())
    assert r["teacher"]["arch"] == f"{nets}:Teacher"
    assert r["student"]["arch"] == f"{nets}:Student"
    assert r["teacher"]["accuracy"] > 0.9 and r["student"]["accuracy"] > 0.8
    assert r["export"]["fp32"]["parity"]["top1_agreement"] >= 0.999
    assert r["summary"]["param_compression"] > 3
    rows = {(e["model"], e["backend"], e["precision"]) for e in r["latency"]}
    assert {("student", "ort-cpu", "int8"), ("teacher", "torch-cpu", "fp32")} <= rows
    # memory is measured in a fresh process, which rebuilt both models from the file
    results = json.loads((out / "profile" / "results.json").read_text())
    torch_rows = [m for m in results["models"] if m["backend"] == "torch-cpu"]
    assert torch_rows and all(m["memory"]["peak_rss_over_baseline_bytes"] >= 0 for m in torch_rows)
