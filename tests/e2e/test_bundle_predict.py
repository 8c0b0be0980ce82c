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
import torch.nn.functional as F
from PIL import Image
from sklearn.datasets import load_digits

from kdpipe.core.runs import file_sha256
from kdpipe.data.splits import stratified_indices
from kdpipe.models import create
from tests.e2e.helpers import kdpipe, kdpipe_here


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
    # The form it ships is the one the report measured fastest at batch 1, on a CPU runtime.
    shipped = json.loads((out / "report.json").read_text())["summary"]["shipped"]
    runtime = {"ort-cpu": "onnxruntime", "ov-cpu": "openvino"}[shipped["backend"]]
    assert bundle["shipped"]["runtime"] == runtime and bundle["shipped"]["batch_size"] == 1
    assert bundle["shipped"]["precision"] == shipped["precision"]
    assert bundle["shipped"]["model"] in bundle["models"]


def _digits_test_pngs(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The digits test split as 8x8 PNG files, and their labels."""
    digits = load_digits()
    _, _, test_idx = stratified_indices(digits.target, [0.1, 0.2], seed=0)
    folder.mkdir()
    paths = []
    for i in test_idx:
        p = folder / f"{i}.png"
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(p)
        paths.append(p)
    return paths, digits.target[test_idx]


def _torch_inputs(paths: list[Path], pre: dict) -> torch.Tensor:
    """The bundle's preprocessing done with torch's own ops on the same decoded PNGs."""
    assert pre["color"] == "gray" and pre["interpolation"] == "bilinear"
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p), np.float32)) for p in paths])
    x = F.interpolate(x[:, None] * pre["scale"], size=pre["resize"], mode="bilinear")
    mean, std = (torch.tensor(pre[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    return (x.repeat(1, 3, 1, 1) - mean) / std


def _without_torch(tmp: Path) -> dict:
    """An environment in which `import torch` fails."""
    blocker = tmp / "no_torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked for this test')\n")
    repo = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp / "no_torch"), str(repo)])}


def test_predict_without_torch_matches_pytorch(first_run, tmp_path: Path) -> None:
    out, _, _ = first_run
    paths, labels = _digits_test_pngs(tmp_path / "imgs")
    env = _without_torch(tmp_path)
    check = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert check.returncode != 0 and "blocked" in check.stderr
    fp32 = ("--precision", "fp32", "--runtime", "onnxruntime")
    proc = kdpipe("predict", str(out / "export"), *map(str, paths), "--json", *fp32, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = np.asarray([json.loads(line)["index"] for line in proc.stdout.splitlines()])
    # The same PNGs through torch (resize, scale, normalize) and the PyTorch student: the
    # numpy preprocessing and the FP32 ONNX file must give the same answers.
    pre = json.loads((out / "export" / "bundle.json").read_text())["preprocessing"]
    student = create("mobilenet_v3_small", 10, out / "distill" / "student.pt").eval()
    with torch.no_grad():
        expected = student(_torch_inputs(paths, pre)).argmax(1).numpy()
    assert len(got) == len(expected) == 360
    assert np.mean(got == expected) >= 0.997  # one near-tie may flip
    # PNG's 8 bits lose little against the 17 grey levels of the training images.
    report = json.loads((out / "report.json").read_text())
    assert abs(np.mean(got == labels) - report["student"]["accuracy"]) < 0.03
    # The shipped form (the default) and the FP32 file on OpenVINO, still without torch.
    for form in ((), ("--precision", "fp32", "--runtime", "openvino")):
        proc = kdpipe("predict", str(out / "export"), *map(str, paths), "--json", *form, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        other = np.asarray([json.loads(line)["index"] for line in proc.stdout.splitlines()])
        assert np.mean(other == got) >= 0.95, form
    proc = kdpipe("predict", str(out / "export"), str(paths[0]), "--runtime", "tflite", env=env)
    assert proc.returncode == 2 and "unknown runtime 'tflite'" in proc.stderr
    # A folder stands for every image file under it (sorted; other files ignored).
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    proc = kdpipe("predict", str(out / "export"), str(tmp_path / "imgs"), "--json", *fp32, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_file = {
        json.loads(line)["image"]: json.loads(line)["index"] for line in proc.stdout.splitlines()
    }
    assert by_file == {str(p): int(k) for p, k in zip(paths, got, strict=True)}
    (tmp_path / "empty").mkdir()
    proc = kdpipe("predict", str(out / "export"), str(tmp_path / "empty"), env=env)
    assert proc.returncode == 2 and "no image files in" in proc.stderr
    # A file name that is not UTF-8 (Latin-1 bytes), printed through a strict stdout (most
    # UTF-8 locales): the name comes out as the bytes it is on disk.
    latin = os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png")
    shutil.copy(paths[0], latin)
    raw = subprocess.run(
        [sys.executable, "-m", "kdpipe", "predict", str(out / "export"), latin],
        env={**env, "PYTHONIOENCODING": "utf-8:strict"},
        capture_output=True,
        timeout=300,
    )
    assert raw.returncode == 0, raw.stderr[-2000:]
    assert raw.stdout.startswith(os.fsencode(latin) + b"\t")


def test_predict_refuses_modified_or_corrupt_models(first_run, tmp_path: Path) -> None:
    out, _, _ = first_run
    bundle = tmp_path / "bundle"
    shutil.copytree(out / "export", bundle)
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(img)
    model = bundle / "student.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])  # truncated
    proc = kdpipe("predict", str(bundle), str(img), "--precision", "fp32")
    assert proc.returncode == 2 and "does not match its sha256" in proc.stderr
    # A truncated file whose checksum was updated too: onnxruntime itself must refuse it.
    meta = json.loads((bundle / "bundle.json").read_text())
    meta["models"]["fp32"]["sha256"] = file_sha256(model)
    (bundle / "bundle.json").write_text(json.dumps(meta))
    proc = kdpipe("predict", str(bundle), str(img), "--precision", "fp32")
    assert proc.returncode == 2 and "onnxruntime cannot load" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error:") == 1
    proc = kdpipe("predict", str(bundle), str(tmp_path / "missing.png"), "--precision", "int8")
    assert proc.returncode == 2 and "cannot read image" in proc.stderr


def test_a_bundle_json_edited_out_of_shape_is_one_line(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A bundle is shipped, copied and edited by hand. Before, a zero std gave NaN scores with
    # exit 0, a huge resize a MemoryError, a string mean or a short class list internal errors.
    out, _, _ = first_run
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(out / "export" / "student.int8.onnx", bundle)
    good = json.loads((out / "export" / "bundle.json").read_text())
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(img)
    edits = {
        "preprocessing.std.0: Input should be greater than 0": ("preprocessing", "std", [0, 0, 0]),
        "preprocessing.mean: Input should be a valid list": ("preprocessing", "mean", "abc"),
        "preprocessing.resize.0: Input should be less than": (
            "preprocessing",
            "resize",
            [10**5] * 2,
        ),
        "preprocessing.color: Input should be 'rgb' or 'gray'": ("preprocessing", "color", "cmyk"),
        "preprocessing.center_crop.fraction: Input should be greater than 0": (
            "preprocessing",
            "center_crop",
            {"fraction": 0, "shorter_side": 40},
        ),
        "is bundle_version '3'; this kdpipe reads 1, 2": (None, "bundle_version", "3"),
        "class_names.0: Input should be a valid string": (None, "class_names", [1, 2]),
        "models.int8.file: String should match pattern": (
            None,
            "models",
            {"int8": {"file": "../x", "sha256": ""}},
        ),
    }
    for expected, (section, key, value) in edits.items():
        meta = json.loads(json.dumps(good))
        (meta[section] if section else meta)[key] = value
        (bundle / "bundle.json").write_text(json.dumps(meta))
        proc = kdpipe_here(capsys, "predict", str(bundle), str(img), "--precision", "int8")
        assert proc.returncode == 2 and expected in " ".join(proc.stderr.split()), proc.stderr
    # Well-formed, but naming fewer classes than the model scores.
    meta = {**good, "class_names": ["a", "b", "c"]}
    (bundle / "bundle.json").write_text(json.dumps(meta))
    proc = kdpipe_here(capsys, "predict", str(bundle), str(img), "--precision", "int8")
    assert proc.returncode == 2 and "names 3 classes but the model gives 10 scores" in proc.stderr


def test_a_reader_that_stops_early_ends_predict_quietly(first_run, tmp_path: Path) -> None:
    # `kdpipe predict ... | head -1`: the closed pipe was "internal error: BrokenPipeError".
    out, _, _ = first_run
    paths, _ = _digits_test_pngs(tmp_path / "imgs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdpipe", "predict", str(out / "export"), str(tmp_path / "imgs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "internal error" not in err and "Traceback" not in err and "Exception" not in err, err
