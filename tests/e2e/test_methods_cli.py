"""Every distillation method end to end through the CLI on digits (tiny: 16x16 inputs, one
epoch, stopping after the distill stage), plus the guarantees that need an export: extras
never ship, and a binary student's ONNX weights really are +-alpha per output channel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from PIL import Image
from typer.testing import CliRunner

from kdpipe.cli import app
from kdpipe.distill.methods import all_methods
from tests.e2e.helpers import module_dir

TINY = [
    *("--teacher", "resnet18", "--student", "mobilenet_v3_small", "--image-size", "16"),
    *("--teacher-epochs", "1", "--epochs", "1", "--quiet"),
]
# Method-specific options, and the loss terms its log must show.
EXTRA: dict[str, list[str]] = {
    "jacobian": ["--student", "mobilenet_v2"],  # MobileNetV3's hardswish lacks double backward
    "takd": ["--assistant", "mobilenet_v2"],
    "dml": ["--peers", "mobilenet_v2", "--set", "sequential=0"],
    "mimic": ["--transfer", "mix", "--set", "target=1"],
}
TERMS: dict[str, set[str]] = {
    "ab": {"ab", "ce", "kd"},
    "adversarial": {"adv", "l1", "ce", "d_loss"},
    "at": {"at", "ce"},
    "binary": {"features", "ce"},
    "cc": {"cc", "ce"},
    "crd": {"crd", "ce", "kd"},
    "dkd": {"dkd", "ce"},
    "dml": {"peer0", "peer1"},
    "fitnet": {"hint", "kd", "ce"},
    "fsp": {"fsp", "ce"},
    "ft": {"reconstruction", "ft", "ce"},
    "jacobian": {"kd", "ce", "jacobian"},
    "kd": {"kd", "ce"},
    "logits": {"logits"},
    "mimic": {"mimic"},
    "nst": {"nst", "ce"},
    "pkt": {"pkt", "ce"},
    "projection": {"projection", "ce"},
    "rkd": {"rkd_distance", "rkd_angle", "ce"},
    "sp": {"sp", "ce"},
    "takd": {"kd", "ce"},
    "vid": {"vid", "ce"},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with module_dir(tmp_path_factory, "methods") as path:  # its runs peak at ~1.4 GB
        yield path


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def distill(runs: Path, method: str, *more: str, until: str = "distill", name: str = "") -> Path:
    out = runs / (name or method)
    code, output = cli("run", *TINY, "--method", method, *EXTRA.get(method, []), *more,
                       "--until", until, "--out", str(out))  # fmt: skip
    assert code == 0, output[-2000:]
    return out


def logged_terms(out: Path) -> set[str]:
    lines = (out / "distill" / "log.jsonl").read_text().splitlines()
    return {k[5:] for line in lines for k in json.loads(line) if k.startswith("loss_")}


def test_every_method_has_a_smoke_run() -> None:
    assert set(TERMS) == set(all_methods()) - {"ce"}


@pytest.mark.parametrize("method", sorted(TERMS))
def test_method_runs_through_the_cli(runs: Path, method: str) -> None:
    out = distill(runs, method)
    metrics = json.loads((out / "distill" / "metrics.json").read_text())
    assert metrics["method"] == method
    assert (out / "distill" / "student.pt").is_file()
    assert logged_terms(out) == TERMS[method]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    if method == "kd":  # one epoch in batches of 128; the incomplete last batch is dropped
        assert (metrics["train_images"], metrics["trained_images"]) == (1257, 1257 // 128 * 128)


def test_multi_model_methods_record_their_chain(runs: Path) -> None:
    takd = json.loads((distill(runs, "takd") / "distill" / "metrics.json").read_text())
    assert [a["arch"] for a in takd["notes"]["assistants"]] == ["mobilenet_v2"]
    assert list((runs / "takd" / "distill" / "assistants").glob("mobilenet_v2-*.pt"))
    dml = json.loads((distill(runs, "dml") / "distill" / "metrics.json").read_text())
    peers = dml["notes"]["peers"]
    assert [p["arch"] for p in peers] == ["mobilenet_v3_small", "mobilenet_v2"]
    best = max(range(2), key=lambda i: peers[i]["val_accuracy"])
    assert dml["arch"] == peers[best]["arch"]
    fit = json.loads((distill(runs, "fitnet") / "distill" / "metrics.json").read_text())
    assert [h["stage"] for h in fit["history"]] == ["hint", "kd"]


def _onnx_counts(path: Path) -> tuple[int, int]:
    model = onnx.load(str(path))
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    return len(model.graph.node), params


def test_extras_never_ship_fitnet_and_kd_students_export_alike(runs: Path) -> None:
    fitnet = distill(runs, "fitnet", "--precision", "fp32", until="export")
    kd = distill(runs, "kd", "--precision", "fp32", until="export")
    assert _onnx_counts(fitnet / "export" / "student.onnx") == _onnx_counts(
        kd / "export" / "student.onnx"
    )
    # one teacher for both: the second run reuses the teacher.onnx the first one exported
    assert json.loads((kd / "export" / "teacher.json").read_text())["reused"] is True


def test_binary_student_onnx_weights_are_plus_minus_alpha(runs: Path) -> None:
    out = distill(runs, "binary", "--precision", "fp32", until="export")
    model = onnx.load(str(out / "export" / "student.onnx"))
    convs = [
        numpy_helper.to_array(t)
        for t in model.graph.initializer
        if len(t.dims) == 4 and t.dims[2] * t.dims[3] * t.dims[1] > 1
    ]
    binary = [w for w in convs if np.allclose(np.abs(w).reshape(len(w), -1).std(1), 0, atol=1e-6)]
    # every conv but the first keeps one magnitude per output channel
    assert len(binary) >= len(convs) - 1 and len(binary) > 10


def test_composition_logs_each_term(runs: Path) -> None:
    out = runs / "composed"
    code, output = cli("run", *TINY, "--terms", "kd=0.9,ce=0.1,at=1000", "--set", "at.p=2",
                       "--until", "distill", "--out", str(out))  # fmt: skip
    assert code == 0, output[-2000:]
    assert logged_terms(out) == {"kd", "ce", "at"}
    assert json.loads((out / "distill" / "metrics.json").read_text())["method"] == (
        "kd:0.9+ce:0.1+at:1000"
    )


def test_unlabeled_transfer_folder_and_partial_labels(runs: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(20):
        (tmp_path / "sub").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(
            tmp_path / "sub" / f"{i}.png"
        )
    out = distill(
        runs,
        "kd",
        "--transfer",
        f"imagefolder:{tmp_path}",
        "--label-fraction",
        "0.1",
        name="partial",
    )
    metrics = json.loads((out / "distill" / "metrics.json").read_text())
    assert metrics["train_images"] == 1257 + 20
    assert metrics["teacher_cache"] is True


def test_layer_errors_name_the_valid_layers(runs: Path) -> None:
    code, output = cli("run", *TINY, "--method", "at", "--teacher-layers", "layer9",
                       "--student-layers", "features.3", "--out", str(runs / "bad"))  # fmt: skip
    assert code == 2
    assert "no layer 'layer9'" in output and "hint:" in output


def test_methods_command_lists_every_method() -> None:
    code, output = cli("methods")
    assert code == 0
    for name in all_methods():
        assert name in output
