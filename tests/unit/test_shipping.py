"""The form to ship, chosen from a profile's measurements (report/shipping.py)."""

from __future__ import annotations

from kdpipe.report.shipping import fastest_forms, shipped_form, upsets

# (backend, precision): (accuracy, p50 at batch 1, p50 at batch 32)
MEASURED = {
    ("torch-cpu", "fp32"): (0.950, 9.0, 60.0),
    ("ort-cpu", "fp32"): (0.950, 3.0, 20.0),
    ("ort-cpu", "int8"): (0.948, 3.4, 12.0),  # INT8 slower than FP32 at batch 1 only
    ("ov-cpu", "bf16"): (0.951, 1.5, 14.0),
    ("ov-cpu", "int8"): (0.930, 1.0, 8.0),  # fastest, but 2 points below FP32
    ("tensorrt", "int8"): (0.949, 0.5, 2.0),  # not a runtime the bundle carries
}


def _profile(measured: dict = MEASURED) -> dict:
    models = [
        {"model": "student", "backend": b, "precision": p, "accuracy": acc}
        for (b, p), (acc, _, _) in measured.items()
    ]
    latency = [
        {"model": "student", "backend": b, "precision": p, "batch_size": bs, "p50_ms": ms}
        for (b, p), (_, ms1, ms32) in measured.items()
        for bs, ms in ((1, ms1), (32, ms32))
    ]
    return {"models": models, "latency": latency}


def test_the_fastest_form_within_the_allowed_drop_wins_at_each_batch_size() -> None:
    forms = fastest_forms(_profile(), "student", max_drop=0.01)
    assert [(f["batch_size"], f["backend"], f["precision"]) for f in forms] == [
        (1, "tensorrt", "int8"),
        (32, "tensorrt", "int8"),
    ]
    # Allowing 3 points lets OpenVINO's INT8 in; it still loses to TensorRT.
    assert fastest_forms(_profile(), "student", max_drop=0.03)[0]["p50_ms"] == 0.5


def test_the_bundle_ships_the_fastest_form_its_runtimes_run_at_the_ship_batch() -> None:
    shipped = shipped_form(_profile(), max_drop=0.01, batch_size=1)
    assert shipped is not None
    assert (shipped["backend"], shipped["precision"], shipped["p50_ms"]) == ("ov-cpu", "bf16", 1.5)
    assert shipped["accuracy"] == 0.951
    # With 3 points allowed the 2-point-worse OpenVINO INT8 becomes the pick.
    looser = shipped_form(_profile(), max_drop=0.03, batch_size=32)
    assert looser is not None and (looser["backend"], looser["precision"]) == ("ov-cpu", "int8")
    assert shipped_form(_profile(), max_drop=0.01, batch_size=8) is None  # not profiled


def test_upsets_name_int8_losing_to_float_and_the_slower_runtime() -> None:
    at_1 = upsets(_profile(), 1)
    assert "INT8 lost to FP32 on ort-cpu at batch 1: 3.400 vs 3.000 ms" in at_1
    assert not any("on ov-cpu" in line for line in at_1)  # its INT8 won
    assert "onnxruntime lost to openvino at batch 1" in at_1[-1]
    assert not any("INT8 lost" in line for line in upsets(_profile(), 32))
    only_ort = {k: v for k, v in MEASURED.items() if k[0] != "ov-cpu"}
    assert not any("lost to openvino" in line for line in upsets(_profile(only_ort), 1))
