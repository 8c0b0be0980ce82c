"""The same ONNX files on onnxruntime and on OpenVINO, batch 1, plain loops interleaved.

    python bench/runtimes.py [--archs resnet18,resnet50] [--image-size 224] [--rounds 5]

Exports random-weight torchvision models with `kdpipe export --arch ... --precision fp32,int8`
(calibrated on digits resized to the size asked), then times each file on onnxruntime's CPU
provider and on OpenVINO's CPU plugin with its default settings (bf16 inference on CPUs with
AMX or AVX512-BF16) and with f32 forced. Each round times every (file, runtime) once, in turn,
for `--seconds`; the table gives the median over rounds of each one's p50. The baseline for
choosing the shipped form by measurement. A benchmark, not a test; needs `pip install openvino`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _export(arch: str, size: int, out: Path) -> dict[str, Path]:
    from kdpipe import models

    weights = out / f"{arch}.pt"
    torch.save(models.create(arch, 10).state_dict(), weights)
    folder = out / arch
    cmd = [sys.executable, "-m", "kdpipe", "export", "--arch", arch, "--weights", str(weights)]
    cmd += ["--data", "digits", "--image-size", str(size), "--precision", "fp32,int8"]
    cmd += ["--max-accuracy-drop", "100", "--out", str(folder), "--quiet"]
    subprocess.run(cmd, check=True)
    return {"fp32": folder / "student.onnx", "int8": folder / "student.int8.onnx"}


def _ort(path: Path, x: np.ndarray, threads: int) -> Callable[[], object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def _openvino(path: Path, x: np.ndarray, threads: int, f32: bool) -> Callable[[], object]:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    if f32:
        config["INFERENCE_PRECISION_HINT"] = "f32"
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def _p50(call: Callable[[], object], seconds: float) -> float:
    for _ in range(10):
        call()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 20:
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((1, 3, args.image_size, args.image_size))
    x = x.astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        calls: dict[tuple[str, str, str], Callable[[], object]] = {}
        for arch in args.archs.split(","):
            for precision, path in _export(arch, args.image_size, Path(tmp)).items():
                calls[(arch, precision, "ort-cpu")] = _ort(path, x, args.threads)
                calls[(arch, precision, "ov-cpu default")] = _openvino(path, x, args.threads, False)
                calls[(arch, precision, "ov-cpu f32")] = _openvino(path, x, args.threads, True)
        p50s: dict[tuple[str, str, str], list[float]] = {k: [] for k in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                p50s[key].append(_p50(call, args.seconds))
    from kdpipe.profile.environment import describe

    env = describe(args.threads)
    features = ", ".join(env.get("cpu_features") or [])
    print(
        f"{env['cpu']} ({features}), {args.threads} threads, batch 1, {args.image_size} px, "
        f"median of {args.rounds} rounds of p50 (ms)"
    )
    print("| model | precision | onnxruntime | OpenVINO default | OpenVINO f32 |")
    print("|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for precision in ("fp32", "int8"):
            row = [
                statistics.median(p50s[(arch, precision, r)])
                for r in ("ort-cpu", "ov-cpu default", "ov-cpu f32")
            ]
            print(f"| {arch} | {precision} | " + " | ".join(f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
