"""The real CLI end to end on the embedded digits data, with tiny epochs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import TINY, kdpipe_here


def test_run_writes_every_artifact_and_a_complete_report(first_run) -> None:
    out, _, _ = first_run
    for rel in (
        "config.yaml",
        "teacher/model.pt",
        "distill/student.pt",
        "distill/log.jsonl",
        "export/student.onnx",
        "export/student.int8.onnx",
        "export/teacher.onnx",
        "profile/results.json",
        "report.json",
        "report.md",
    ):
        assert (out / rel).is_file(), rel
    r = json.loads((out / "report.json").read_text())
    assert r["schema_version"] == "1.0"
    assert 0 <= r["teacher"]["accuracy"] <= 1 and 0 <= r["student"]["accuracy"] <= 1
    assert r["summary"]["accuracy_retention"] == pytest.approx(
        r["student"]["accuracy"] / r["teacher"]["accuracy"]
    )
    assert r["summary"]["speedup_vs_teacher"] > 0
    assert r["export"]["fp32"]["parity"]["top1_agreement"] >= 0.999
    assert r["export"]["fp32"]["parity"]["samples"] == 360
    combos = {(e["model"], e["backend"], e["precision"], e["batch_size"]) for e in r["latency"]}
    for bs in (1, 4):
        assert {
            ("teacher", "torch-cpu", "fp32", bs),
            ("student", "torch-cpu", "fp32", bs),
            ("student", "ort-cpu", "fp32", bs),
            ("student", "ort-cpu", "int8", bs),
            ("teacher", "ort-cpu", "fp32", bs),
            ("student", "ov-cpu", "int8", bs),
        } <= combos
        # OpenVINO runs the float files in bf16 where the CPU has it, and says so
        float_forms = {(m, p) for m, b, p, size in combos if b == "ov-cpu" and size == bs}
        assert float_forms >= {("teacher", "bf16"), ("student", "bf16")} or float_forms >= {
            ("teacher", "fp32"),
            ("student", "fp32"),
        }
    # The headline speedup sets the fastest student against the fastest teacher, both measured
    # in this run's interleaved rounds: with the teacher on onnxruntime and OpenVINO too, a
    # runtime change is not a student gain. (--max-accuracy-drop 100 lets every form count.)
    basis = r["summary"]["speedup_basis"]
    fastest = {
        who: min(
            (e["interleaved"]["p50_ms"], e["backend"], e["precision"])
            for e in r["latency"]
            if e["model"] == who and e["batch_size"] == 1
        )
        for who in ("teacher", "student")
    }
    for who in ("teacher", "student"):
        assert (basis[who]["p50_ms"], basis[who]["backend"], basis[who]["precision"]) == fastest[
            who
        ]
    assert r["summary"]["speedup_vs_teacher"] == pytest.approx(
        fastest["teacher"][0] / fastest["student"][0]
    )
    assert r["summary"]["ort_speedup_vs_teacher"] > 0
    assert r["teacher"]["onnx"]["parity"]["top1_agreement"] >= 0.999
    for e in r["latency"]:
        assert e["iters"] >= 10 and e["p50_ms"] <= e["p95_ms"] <= e["p99_ms"]
        assert set(e) >= {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "throughput"}
    # The student log has one line per epoch; the teacher logits were cached.
    log = (out / "distill" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2 and "loss_kd" in json.loads(log[0])
    # MobileNetV3's BatchNorm averages too slowly for two short epochs: its statistics are
    # recomputed each epoch, or the student would predict one digit (10 %) in eval mode.
    assert json.loads(log[-1])["bn_recalibrated_images"] > 1000
    assert r["student"]["accuracy"] > 0.3
    assert r["student"]["teacher_cache"] is True
    assert r["student"]["teacher_cache_source"] == "computed"
    md = (out / "report.md").read_text()
    assert "mobilenet_v3_small" in md and "| student | ort-cpu | int8 |" in md


def test_second_run_reuses_everything(first_run, capsys: pytest.CaptureFixture[str]) -> None:
    out, first_seconds, env = first_run
    start = time.perf_counter()
    proc = kdpipe_here(capsys, "run", *TINY, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((out / "report.json").read_text())
    assert all(r["stages"][s]["reused"] for s in ("teacher", "distill", "export", "profile"))
    assert time.perf_counter() - start < first_seconds / 2


def test_augmented_runs_run_the_teacher_every_batch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "aug"
    loud = [a for a in TINY if a != "--quiet"]
    env = {"KDPIPE_CACHE": str(tmp_path / "cache")}  # not first_run's: a test counts its teachers
    proc = kdpipe_here(
        capsys, "run", *loud, "--augment", "crop", "--until", "distill", "--out", str(out), env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the teacher runs on every batch (--augment crop)" in " ".join(proc.stderr.split())
    assert json.loads((out / "teacher" / "metrics.json").read_text())["source"] == "trained"
    m = json.loads((out / "distill" / "metrics.json").read_text())
    assert m["teacher_cache"] is False and m["teacher_cache_source"] is None


def test_image_files_train_with_resized_crops_in_loader_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's --augment resized-crop-flip, --crop-scale, --center-crop and --workers reach
    the trainer: an image folder trained through two DataLoader workers, the settings in the
    run's config and in the teacher's fingerprint (another --crop-scale or a centre crop
    trains another teacher; another --workers reuses it)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, c in enumerate(("a", "b")):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(16):
            pixels = rng.normal(90 * k + 60, 40, (30, 40, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "imgs" / c / f"{i}.png")
    env = {"KDPIPE_CACHE": str(tmp_path / "cache")}
    base = [*TINY, "--data", f"imagefolder:{tmp_path / 'imgs'}", "--image-size", "24"]
    base += ["--augment", "resized-crop-flip", "--until", "teacher"]

    def run(name: str, *extra: str) -> str:
        out = tmp_path / name
        proc = kdpipe_here(capsys, "run", *base, *extra, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "teacher" / "metrics.json").read_text())["source"]

    assert run("first", "--crop-scale", "0.3", "--workers", "2") == "trained"
    config = (tmp_path / "first" / "config.yaml").read_text()
    assert "crop_scale: 0.3" in config and "augment: resized-crop-flip" in config
    assert "workers: 2" in config
    assert run("again", "--crop-scale", "0.3") == "cache"  # workers change no result
    assert run("other", "--crop-scale", "0.5") == "trained"
    assert run("centred", "--crop-scale", "0.5", "--center-crop", "0.875") == "trained"
    assert "center_crop: 0.875" in (tmp_path / "centred" / "config.yaml").read_text()


def test_outputs_damaged_since_a_run_are_made_again_not_trusted(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    import torch

    out, _, env = first_run
    b, cache = tmp_path / "b", tmp_path / "cache"
    shutil.copytree(out, b)
    shutil.copytree(env["KDPIPE_CACHE"], cache)
    teacher = b / "teacher" / "model.pt"
    teacher.write_bytes(teacher.read_bytes()[:1000])  # cut short: its size says so
    student = b / "distill" / "student.pt"
    _flip_a_bit(student)  # same size: only its SHA-256 in stage.json tells
    (cached,) = cache.glob("teachers/*/model.pt")
    _flip_a_bit(cached)  # a weight changed: torch.load takes it, its CRC-32 does not hold
    proc = kdpipe_here(
        capsys, "run", *TINY, "--out", str(b), env={**env, "KDPIPE_CACHE": str(cache)}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "not the" in err and "the stage wrote; running the stage again" in err
    assert "changed since the stage wrote it (its SHA-256 differs)" in err
    assert "ignoring the cached resnet18" in err and "fails its CRC-32 check" in err
    r = json.loads((b / "report.json").read_text())
    assert [r["stages"][s]["reused"] for s in ("teacher", "distill", "export")] == [
        False,
        False,
        True,
    ]
    assert json.loads((b / "teacher" / "metrics.json").read_text())["source"] == "trained"
    # Trained again from the same seed on the CPU: the same student, tensor for tensor.
    again = torch.load(student, weights_only=True)
    first = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)


def test_another_teacher_precision_distills_again_instead_of_reusing(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    out, _, env = first_run
    b = tmp_path / "b"
    shutil.copytree(out, b)
    stage = {d: json.loads((out / d / "stage.json").read_text()) for d in ("teacher", "distill")}
    first = json.loads((out / "distill" / "metrics.json").read_text())["teacher_precision"]
    other = "fp32" if first == "bf16" else "bf16"  # `auto` chose `first` on this machine
    args = ["run", *TINY, "--out", str(b), "--until", "distill", "--teacher-precision"]
    proc = kdpipe_here(capsys, *args, other, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((b / "distill" / "metrics.json").read_text())["teacher_precision"] == other
    again = {d: json.loads((b / d / "stage.json").read_text()) for d in ("teacher", "distill")}
    assert again["teacher"] == stage["teacher"]  # the teacher's training does not depend on it
    assert again["distill"]["fingerprint"] != stage["distill"]["fingerprint"]
    # The same precision again, or asked by name for what `auto` resolved to: reused.
    proc = kdpipe_here(capsys, *args, other, env=env)
    assert (
        proc.returncode == 0
        and json.loads((b / "distill" / "stage.json").read_text()) == again["distill"]
    )
    c = tmp_path / "c"
    shutil.copytree(out, c)
    args[args.index(str(b))] = str(c)
    proc = kdpipe_here(capsys, *args, first, env=env)
    assert (
        proc.returncode == 0
        and json.loads((c / "distill" / "stage.json").read_text()) == stage["distill"]
    )


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # the middle of a weights file: inside a tensor
    path.write_bytes(bytes(data))


def test_new_run_dir_reuses_the_cached_teacher(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    b = tmp_path / "b"
    proc = kdpipe_here(
        capsys, "run", *TINY, "--epochs", "1", "--out", str(b), "--until", "distill", env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    teacher = json.loads((b / "teacher" / "metrics.json").read_text())
    assert teacher["source"] == "cache"
    first = json.loads((out / "teacher" / "metrics.json").read_text())
    assert first["source"] == "trained" and teacher["test_accuracy"] == first["test_accuracy"]
    # Same teacher weights, same images: the teacher-logit table is read, not recomputed.
    assert (
        json.loads((b / "distill" / "metrics.json").read_text())["teacher_cache_source"] == "disk"
    )
    assert not (b / "export").exists()  # --until distill stops there


def test_a_cache_that_cannot_be_written_costs_the_reuse_not_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # KDPIPE_CACHE naming a file (or a read-only home) was an internal error right after the
    # teacher trained, and every rerun failed at the same place.
    blocker = tmp_path / "cache"
    blocker.write_text("a file, not a folder")
    env = {"KDPIPE_CACHE": str(blocker)}
    out = tmp_path / "run"
    args = ("run", *TINY, "--teacher-epochs", "1", "--epochs", "1", "--image-size", "16")
    proc = kdpipe_here(capsys, *args, "--out", str(out), "--until", "distill", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert f"teacher: not kept in the cache {blocker} (Not a directory)" in err
    assert "distill: teacher-logit table not kept in the cache" in err
    assert (out / "distill" / "student.pt").is_file() and blocker.read_text().startswith("a file")


def test_gate_on_a_real_run(first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, _, env = first_run
    r = json.loads((out / "report.json").read_text())
    key = "student.ort-cpu.fp32.bs1.p95_ms"
    assert key in r["metrics"] and (out / "profile" / "samples.json").is_file()
    loose = tmp_path / "loose.yaml"
    loose.write_text(
        f"{key}: {{max: {r['metrics'][key] * 1.5}}}\nexport.fp32.top1_agreement: {{min: 0.999}}\n"
    )
    proc = kdpipe_here(capsys, "gate", str(out / "report.json"), "--budgets", str(loose), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Below every timed call: no bootstrap interval can reach it (at 0.2 x p95 a tiny run's
    # interval once did, when one slow round made the p95 5x the typical call).
    fastest = min(
        json.loads((out / "profile" / "samples.json").read_text())[key[: -len(".p95_ms")]]
    )
    tight = tmp_path / "tight.yaml"
    tight.write_text(f"{key}: {{max: {min(r['metrics'][key] * 0.2, fastest / 2)}}}\n")
    proc = kdpipe_here(capsys, "gate", str(out / "report.json"), "--budgets", str(tight), env=env)
    assert proc.returncode == 1 and "FAIL" in proc.stdout


def test_torchvision_imagenet_weights_fine_tune_the_teacher_and_start_the_student(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--teacher-weights torchvision` with ImageNet's 1000-class weights from torchvision's
    local cache, on 10-class digits: the teacher is fine-tuned from them (fresh classifier),
    cached under the file's hash; `--student-weights torchvision:TAG` starts the student. A
    learning rate of 1e-9 leaves the trained convolutions where the files put them (the
    teacher's is --fine-tune-lr: --teacher-lr is the recipe from scratch)."""
    import torch

    from tests.unit.test_weights import cache_imagenet_weights

    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    _, t_state = cache_imagenet_weights(home, "resnet18")
    _, s_state = cache_imagenet_weights(home, "mobilenet_v3_small")
    env = {"KDPIPE_CACHE": str(tmp_path / "cache")}
    base = [*TINY, "--teacher-epochs", "1", "--epochs", "1", "--fine-tune-lr", "1e-9"]
    base += ["--teacher-weights", "torchvision"]

    def run(name: str, *extra: str) -> Path:
        out = tmp_path / name
        proc = kdpipe_here(capsys, "run", *base, *extra, "--out", str(out), env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out

    student_start = ["--student-weights", "torchvision:IMAGENET1K_V1", "--lr", "1e-9"]
    out = run("first", *student_start, "--until", "distill")  # export: tested elsewhere
    teacher = json.loads((out / "teacher" / "metrics.json").read_text())
    assert teacher["source"] == "fine-tuned" and teacher["weights"] == "torchvision"
    tuned = torch.load(out / "teacher" / "model.pt", weights_only=True)
    assert tuned["fc.weight"].shape == (10, 512)
    torch.testing.assert_close(tuned["conv1.weight"], t_state["conv1.weight"], atol=1e-6, rtol=0)
    # The student is mobilenet_v3_small (TINY): its cached file starts it, whole run long.
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert student["classifier.3.weight"].shape[0] == 10
    key = "features.0.0.weight"
    torch.testing.assert_close(student[key], s_state[key], atol=1e-6, rtol=0)
    # Another output directory reuses the fine-tuned teacher; new weights in the cache do not.
    assert _source(run("again", "--until", "teacher")) == "cache"
    cache_imagenet_weights(home, "resnet18", seed=1)
    assert _source(run("changed", "--until", "teacher")) == "fine-tuned"
    # A tag torchvision lacks, and weights not in the cache: one line each, exit 2.
    proc = kdpipe_here(capsys, "run", *base, "--student-weights", "torchvision:V9", "--out",
                       str(tmp_path / "bad"), env=env)  # fmt: skip
    assert proc.returncode == 2 and "torchvision has no V9 weights for" in proc.stderr
    proc = kdpipe_here(capsys, "run", *base, "--teacher", "resnet34", "--out",
                       str(tmp_path / "missing"), env=env)  # fmt: skip
    assert proc.returncode == 2 and "are not in the local cache" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "missing").exists()
    # A file of one's own for other classes is refused (more often the wrong file than a
    # wish) unless --fine-tune-teacher asks; with it, a teacher that fits trains on as well.
    three = tmp_path / "three.pt"
    torch.save(
        {**tuned, "fc.weight": tuned["fc.weight"][:3], "fc.bias": tuned["fc.bias"][:3]}, three
    )
    own = [*base, "--teacher-weights", str(three), "--until", "teacher"]
    proc = kdpipe_here(capsys, "run", *own, "--out", str(tmp_path / "three"), env=env)
    assert proc.returncode == 2 and "they score 3 classes, the data has 10" in proc.stderr
    assert "add --fine-tune-teacher" in " ".join(proc.stderr.split())
    assert _source(run("three", *own[len(base) :], "--fine-tune-teacher")) == "fine-tuned"
    fits = [*base, "--teacher-weights", str(out / "teacher" / "model.pt"), "--until", "teacher"]
    assert _source(run("fits", *fits[len(base) :])) == "weights"
    assert _source(run("tuned", *fits[len(base) :], "--fine-tune-teacher")) == "fine-tuned"


def _source(out: Path) -> str:
    return json.loads((out / "teacher" / "metrics.json").read_text())["source"]
