"""Which form of a model to ship, chosen by measurement: at each batch size, the fastest
(backend, precision) whose test accuracy stays within the allowed drop of the model's own
PyTorch FP32 accuracy. INT8 is not assumed faster than FP32, nor one runtime than another:
where the expected winner lost, a note says so, with both figures. Forms are compared by their
interleaved p50 (measured in the same rounds); the p50 a form reports is its own, alone.
"""

from __future__ import annotations

# The runtimes a bundle carries its ONNX files to, by the profile's backend name.
BUNDLE_RUNTIMES = {"ort-cpu": "onnxruntime", "ov-cpu": "openvino"}


def ratio_p50(entry: dict) -> float:
    """The p50 to compare forms by: the interleaved pass's, where the profile has one."""
    return float((entry.get("interleaved") or entry)["p50_ms"])


def _accuracy(profile: dict, model: str) -> dict[tuple[str, str], float]:
    return {
        (r["backend"], r["precision"]): r["accuracy"]
        for r in profile["models"]
        if r["model"] == model
    }


def fastest_forms(profile: dict, model: str, max_drop: float) -> list[dict]:
    """Per batch size, `model`'s fastest form whose accuracy is at most `max_drop` (a
    fraction) below its torch-cpu FP32 accuracy, with that accuracy."""
    accuracy = _accuracy(profile, model)
    floor = accuracy.get(("torch-cpu", "fp32"), 0.0) - max_drop - 1e-9
    forms = []
    for bs in sorted({e["batch_size"] for e in profile["latency"]}):
        allowed = [
            e
            for e in profile["latency"]
            if e["model"] == model
            and e["batch_size"] == bs
            and accuracy.get((e["backend"], e["precision"]), 0.0) >= floor
        ]
        if allowed:
            best = min(allowed, key=ratio_p50)
            forms.append(_form(best, accuracy))
    return forms


def _form(entry: dict, accuracy: dict[tuple[str, str], float]) -> dict:
    key = (entry["backend"], entry["precision"])
    return {
        "batch_size": entry["batch_size"],
        "backend": entry["backend"],
        "precision": entry["precision"],
        "p50_ms": entry["p50_ms"],
        "interleaved_p50_ms": ratio_p50(entry),
        "accuracy": accuracy[key],
    }


def shipped_form(profile: dict, max_drop: float, batch_size: int) -> dict | None:
    """The student's form the bundle names: the fastest a bundle runtime runs (onnxruntime or
    OpenVINO on the CPU) within the allowed drop, at the batch size the user ships."""
    cpu = {**profile, "latency": [e for e in profile["latency"] if e["backend"] in BUNDLE_RUNTIMES]}
    return next(
        (f for f in fastest_forms(cpu, "student", max_drop) if f["batch_size"] == batch_size),
        None,
    )


def upsets(profile: dict, batch_size: int) -> list[str]:
    """One line per expectation the student's measurements broke at `batch_size`: INT8 slower
    than FP32 on the same runtime, or the same file slower on onnxruntime than on OpenVINO."""
    p50 = {
        (e["backend"], e["precision"]): ratio_p50(e)
        for e in profile["latency"]
        if e["model"] == "student" and e["batch_size"] == batch_size
    }
    lines = []
    for backend in BUNDLE_RUNTIMES:
        int8, fp32 = p50.get((backend, "int8")), _float_p50(p50, backend)
        if int8 is not None and fp32 is not None and int8 > fp32[0]:
            lines.append(
                f"INT8 lost to {fp32[1].upper()} on {backend} at batch {batch_size}: "
                f"{int8:.3f} vs {fp32[0]:.3f} ms"
            )
    best = {
        runtime: min((ms, p) for (b, p), ms in p50.items() if b == backend)
        for backend, runtime in BUNDLE_RUNTIMES.items()
        if any(b == backend for b, _ in p50)
    }
    if len(best) == 2:
        (slow, (s_ms, s_p)), (fast, (f_ms, f_p)) = sorted(best.items(), key=lambda kv: -kv[1][0])
        lines.append(
            f"{slow} lost to {fast} at batch {batch_size}: {s_ms:.3f} ms ({s_p}) vs "
            f"{f_ms:.3f} ms ({f_p}), the fastest form of each"
        )
    return lines


def _float_p50(p50: dict[tuple[str, str], float], backend: str) -> tuple[float, str] | None:
    """The float form a runtime ran (OpenVINO's may be bf16) and its p50."""
    for precision in ("fp32", "bf16"):
        if (backend, precision) in p50:
            return p50[(backend, precision)], precision
    return None
