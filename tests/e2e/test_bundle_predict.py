"""The edge bundle: checksums, metadata, and `kdpipe predict` running with torch unimportable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from kdpipe.config import DataConfig
from kdpipe.data import load_data
from kdpipe.data.splits import stratified_indices
from kdpipe.models import create
from kdpipe.runs import file_sha256
from tests.e2e.helpers import kdpipe

pytestmark = pytest.mark.slow


def test_bundle_describes_and_checksums_every_file(first_run) -> None:
    out, _, _ = first_run
    export = out / "export"
    bundle = json.loads((export / "bundle.json").read_text())
    assert set(bundle["models"]) == {"fp32", "fp16", "int8"}
    for entry in bundle["models"].values():
        assert file_sha256(export / entry["file"]) == entry["sha256"]
    assert bundle["labels"]["sha256"] == file_sha256(export / "labels.txt")
    assert (export / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    assert bundle["input"] == {
        "name": "input",
        "shape": ["batch", 3, 32, 32],
        "dtype": "float32",
        "layout": "NCHW",
    }
    pre = bundle["preprocessing"]
    assert pre["color"] == "gray" and pre["resize"] == [32, 32] and len(pre["mean"]) == 3
    meta = {p.key: p.value for p in onnx.load(str(export / "student.fp16.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == bundle["class_names"]


def _digits_test_pngs(folder: Path) -> tuple[list[Path], torch.Tensor]:
    """The digits test split as 8x8 PNG files, and the same images as kdpipe's tensors."""
    digits = load_digits()
    _, _, test_idx = stratified_indices(digits.target, [0.1, 0.2], seed=0)
    folder.mkdir()
    paths = []
    for i in test_idx:
        p = folder / f"{i}.png"
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(p)
        paths.append(p)
    return paths, load_data(DataConfig(), seed=0).test.tensors[0]


def _without_torch(tmp: Path) -> dict:
    """An environment in which `import torch` fails."""
    blocker = tmp / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    repo = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "no_torch"), str(repo)])}


def test_predict_without_torch_matches_pytorch(first_run, tmp_path: Path) -> None:
    out, _, _ = first_run
    paths, tensors = _digits_test_pngs(tmp_path / "imgs")
    env = _without_torch(tmp_path)
    check = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert check.returncode != 0 and "blocked" in check.stderr
    proc = kdpipe("predict", str(out / "export"), *map(str, paths), "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [json.loads(line)["index"] for line in proc.stdout.splitlines()]
    student = create("mobilenet_v3_small", 10, out / "distill" / "student.pt").eval()
    with torch.no_grad():
        expected = student(tensors).argmax(1).tolist()
    assert len(got) == len(expected) == 360
    agree = np.mean(np.asarray(got) == np.asarray(expected))
    assert agree >= 0.999, agree


def test_predict_refuses_modified_or_corrupt_models(first_run, tmp_path: Path) -> None:
    out, _, _ = first_run
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "export", bundle)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(img)
    model = bundle / "student.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])  # truncated
    proc = kdpipe("predict", str(bundle), str(img))
    assert proc.returncode == 2 and "does not match its sha256" in proc.stderr
    # A truncated file whose checksum was updated too: onnxruntime itself must refuse it.
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["models"]["fp32"]["sha256"] = file_sha256(model)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    proc = kdpipe("predict", str(bundle), str(img))
    assert proc.returncode == 2 and "onnxruntime cannot load" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    proc = kdpipe("predict", str(bundle), str(tmp_path / "missing.png"), "--precision", "int8")
    assert proc.returncode == 2 and "cannot read image" in proc.stderr
