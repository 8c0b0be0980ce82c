"""`kdpipe profile` on its own, and `kdpipe gate --measure`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdpipe.profile.latency import REWARM_CALLS, ROUND_CALLS
from tests.e2e.helpers import kdpipe_here

QUICK = ["--batch-sizes", "1,2", "--min-iters", "10", "--min-seconds", "0.05", "--quiet"]


@pytest.mark.openvino
def test_profile_any_mix_of_files(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    results = tmp_path / "p.json"
    proc = kdpipe_here(
        capsys,
        "profile",
        str(out / "export"),
        f"resnet18:{out / 'teacher' / 'model.pt'}",
        *QUICK,
        "--out",
        str(results),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(results.read_text())
    assert r["input_size"] == [3, 32, 32]  # taken from the bundle
    got = {(e["model"], e["backend"], e["precision"], e["batch_size"]) for e in r["latency"]}
    for bs in (1, 2):
        assert {("export", "ort-cpu", p, bs) for p in ("fp32", "fp16", "int8")} <= got
        assert ("export", "ov-cpu", "int8", bs) in got
        assert ("resnet18", "torch-cpu", "fp32", bs) in got
    assert all(e["iters"] >= 10 for e in r["latency"])
    assert all(m["peak_rss_over_baseline_bytes"] > 1_000_000 for m in r["memory"].values())
    assert r["environment"]["threads"] >= 1
    # How the timings were taken travels with them: interleaved rounds without spinning
    # between calls, for ratios; then each alone, spinning as an application's would.
    assert r["settings"]["round"] == {"rewarm_calls": REWARM_CALLS, "timed_calls": ROUND_CALLS}
    assert r["settings"]["ort_spinning"] == {
        "alone": "within and between calls",
        "interleaved": "within a call",
    }
    mixed = {k: v for k, v in r["samples"].items() if k.endswith(".interleaved")}
    assert len(mixed) == len(r["latency"]) == len(r["samples"]) - len(mixed)
    assert all(len(v) % ROUND_CALLS == 0 for v in mixed.values())  # whole rounds, re-warm untimed
    assert all(e["interleaved"]["p50_ms"] > 0 and e["p50_ms"] > 0 for e in r["latency"])


def test_lone_onnx_files_are_fed_the_size_they_declare(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --input-size: each ONNX file's own (C, H, W) is used, not 3x224x224; files that
    declare different sizes are refused with exit 2 rather than crashing mid-measurement."""
    out, _, env = first_run
    results = tmp_path / "p.json"
    onnx_files = [str(out / "export" / n) for n in ("student.onnx", "student.int8.onnx")]
    proc = kdpipe_here(
        capsys, "profile", *onnx_files, *QUICK, "--no-memory", "--out", str(results), env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(results.read_text())
    assert r["input_size"] == [3, 32, 32]
    assert {e["precision"] for e in r["latency"] if e["backend"] == "ort-cpu"} == {"fp32", "int8"}

    import torch

    from kdpipe.data.splits import DataInfo
    from kdpipe.export.onnx import export_onnx

    small = tmp_path / "small.onnx"
    info = DataInfo("tiny", ["a", "b"], (3, 16, 16), [0.0] * 3, [1.0] * 3)
    export_onnx(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 2)), info, small)
    proc = kdpipe_here(capsys, "profile", onnx_files[0], str(small), *QUICK, env=env)
    assert proc.returncode == 2 and "different input sizes" in proc.stderr
    assert "3,16,16" in proc.stderr and "Traceback" not in proc.stderr
    # A lone file is timed both ways too: its absolute figures come from the plain loop.
    alone = tmp_path / "alone.json"
    proc = kdpipe_here(
        capsys, "profile", str(small), *QUICK, "--no-memory", "--out", str(alone), env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lone = json.loads(alone.read_text())
    assert {e["backend"] for e in lone["latency"]} >= {"ort-cpu"}
    assert all(
        len(lone["samples"][f"{k}.interleaved"]) > 0
        for k in lone["samples"]
        if not k.endswith(".interleaved")
    )


def test_profile_refuses_corrupt_onnx(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(b"\x08\x07\x12\x04torch" + b"\x00" * 50)
    proc = kdpipe_here(capsys, "profile", str(bad), "--quiet")
    assert proc.returncode == 2 and "not a valid ONNX model" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = kdpipe_here(capsys, "profile", "resnet18", "--quiet")
    assert proc.returncode == 2 and "cannot profile 'resnet18'" in proc.stderr
    # A file that fixes an input no machine here can hold (43 GB): one line, not an internal
    # error from torch's allocator.
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 60000, 60000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 60000, 60000])],
    )
    huge = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), huge)
    proc = kdpipe_here(capsys, "profile", str(huge), "--quiet")
    assert proc.returncode == 2 and "1x3x60000x60000 floats is 43.2 GB" in proc.stderr


def test_gate_measure_re_profiles_the_run(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    before = json.loads((out / "profile" / "results.json").read_text())
    budgets = tmp_path / "b.yaml"
    key = "student.ort-cpu.fp32.bs1.p50_ms"
    budgets.write_text(f"export.fp32.top1_agreement: {{min: 0.999}}\n{key}: {{max: 0.000001}}\n")
    # The report as given claims a teacher four times as fast as this machine will measure it,
    # so the gate's note must blame the machine for the (impossible) latency budget it breaks.
    # (Twice as fast was within the noise of the tiny run's one-round teacher timing: a clean
    # clone's CI re-measured the teacher 2x faster than its first profile had.)
    given = json.loads((out / "report.json").read_text())
    for k in [k for k in given["metrics"] if k.startswith("teacher.") and k.endswith(".p50_ms")]:
        given["metrics"][k] *= 0.25
    (out / "report.json").write_text(json.dumps(given))
    proc = kdpipe_here(
        capsys,
        "gate", str(out / "report.json"), "--budgets", str(budgets), "--measure", "--confirm",
        "0", "--quiet", env=env,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"note: {key} moved" in proc.stdout and "machine is slower now" in proc.stdout
    after = json.loads((out / "profile" / "results.json").read_text())
    assert after["latency"] != before["latency"]  # measured again, not reused
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["profile"]["reused"] is False


def test_profile_run_dir_writes_out_and_refuses_input_size(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    proc = kdpipe_here(capsys, "profile", str(out), "--input-size", "3,64,64", "--quiet", env=env)
    assert proc.returncode == 2 and "does not apply to a run directory" in proc.stderr
    results = tmp_path / "again.json"
    proc = kdpipe_here(
        capsys, "profile", str(out), *QUICK, "--no-memory", "--out", str(results), env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    copy, report = json.loads(results.read_text()), json.loads((out / "report.json").read_text())
    assert copy["latency"] == report["latency"] and copy["metrics"] == report["metrics"]
    assert report["profile_settings"]["round"]["rewarm_calls"] == REWARM_CALLS


@pytest.mark.openvino
def test_a_run_directory_among_other_targets_stands_for_its_models(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    other = out / "export" / "student.onnx"
    results = tmp_path / "mix.json"
    args = [str(out), str(other), "--batch-sizes", "1", "--min-iters", "5", "--quiet"]
    proc = kdpipe_here(
        capsys,
        "profile",
        *args,
        "--min-seconds",
        "0",
        "--no-memory",
        "--out",
        str(results),
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    latency = json.loads(results.read_text())["latency"]
    got = {(e["model"], e["backend"], e["precision"]) for e in latency if e["backend"] != "ov-cpu"}
    run = out.name
    # OpenVINO runs the same files: the FP32 ones in bf16 where this CPU has it
    ov = {(e["model"], e["precision"]) for e in latency if e["backend"] == "ov-cpu"}
    assert {(f"{run}/student", "int8"), ("student", "bf16")} <= ov or {
        (f"{run}/student", "int8"),
        ("student", "fp32"),
    } <= ov
    assert got == {
        (f"{run}/student", "ort-cpu", "fp32"),
        (f"{run}/student", "ort-cpu", "fp16"),
        (f"{run}/student", "ort-cpu", "int8"),
        (f"{run}/teacher", "ort-cpu", "fp32"),
        (f"{run}/teacher", "torch-cpu", "fp32"),
        (f"{run}/student", "torch-cpu", "fp32"),
        ("student", "ort-cpu", "fp32"),
    }
    # the run's own report is not touched by a mixed profile
    assert json.loads((out / "report.json").read_text())["profile_settings"]["min_iters"] != 5


def test_int8_slower_than_fp32_ships_fp32_and_says_why(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Forced: every INT8 call takes 30 ms longer, on both runtimes. Re-profiling the run
    must ship a float form (FP32, or its bf16 or FP16 form where one measured faster), name
    it in bundle.json, and say in one line that INT8 lost."""
    import shutil
    import time

    from kdpipe.runtimes import registry

    out, _, env = first_run
    run = tmp_path / "run"
    shutil.copytree(out, run)

    def slowed(make):  # noqa: ANN001, ANN202
        def build(target, *args, **kwargs):  # noqa: ANN001, ANN202
            runner = make(target, *args, **kwargs)
            if target.precision == "int8":
                inner = runner.timed_call

                def slow(x):  # noqa: ANN001, ANN202
                    call = inner(x)
                    return lambda: (time.sleep(0.03), call())[1]

                runner.timed_call = slow
            return runner

        return build

    monkeypatch.setattr(registry, "ort_runner", slowed(registry.ort_runner))
    monkeypatch.setattr(registry, "ov_runner", slowed(registry.ov_runner))
    proc = kdpipe_here(
        capsys, "profile", str(run), "--min-iters", "10", "--min-seconds", "0.05", env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((run / "report.json").read_text())
    shipped = report["summary"]["shipped"]
    assert shipped["precision"] in ("fp32", "bf16", "fp16") and shipped["batch_size"] == 1
    bundle = json.loads((run / "export" / "bundle.json").read_text())
    assert bundle["shipped"]["model"] in ("fp32", "fp16")  # a float file, whichever was faster
    lost = [u for u in report["summary"]["upsets"] if u.startswith("INT8 lost to")]
    assert lost and all(" at batch 1: " in u for u in lost)
    ship_line = [line for line in proc.stdout.splitlines() if line.startswith("ship ")]
    assert len(ship_line) == 1 and "INT8 lost to" in ship_line[0]
    assert "INT8 lost to" in (run / "report.md").read_text()
