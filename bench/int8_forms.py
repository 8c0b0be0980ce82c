"""Which INT8 form each CPU runtime runs fastest: onnxruntime's quantization layouts, and
OpenVINO on kdpipe's Q/DQ file against NNCF's own post-training quantization.

    pip install nncf   # for the OpenVINO-native form; not a kdpipe dependency
    python bench/int8_forms.py [--arch resnet18] [--image-size 224] [--rounds 3]

One random-weight model, exported by `kdpipe export` (FP32 and kdpipe's INT8), then quantized
again from the same FP32 file and the same 64 calibration images in the layouts onnxruntime
offers: QOperator (QLinearConv) instead of Q/DQ, int8 instead of uint8 activations, per-tensor
instead of per-channel weights. Each file is timed on onnxruntime (its default session); the
Q/DQ file and NNCF's quantized model on OpenVINO. Batch 1, median over rounds of each p50.
Speed only: with random weights accuracy means nothing (the run's guard judges that). A
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from runtimes import _export, _openvino, _ort, _p50  # bench/runtimes.py

from kdpipe.profile.layers import onnxruntime_layers, openvino_layers

LAYOUTS = {
    "Q/DQ u8s8 per-channel (kdpipe)": (QuantFormat.QDQ, QuantType.QUInt8, True),
    "QOperator u8s8 per-channel": (QuantFormat.QOperator, QuantType.QUInt8, True),
    "Q/DQ s8s8 per-channel": (QuantFormat.QDQ, QuantType.QInt8, True),
    "Q/DQ u8s8 per-tensor": (QuantFormat.QDQ, QuantType.QUInt8, False),
}


class _Images(CalibrationDataReader):
    def __init__(self, images: np.ndarray) -> None:
        self.items = iter([{"input": x[None]} for x in images])

    def get_next(self) -> dict | None:
        return next(self.items, None)


def _layouts(fp32: Path, images: np.ndarray, out: Path) -> dict[str, Path]:
    files = {}
    for name, (fmt, activations, per_channel) in LAYOUTS.items():
        path = out / f"{len(files)}.onnx"
        quantize_static(
            str(fp32),
            str(path),
            _Images(images),
            quant_format=fmt,
            activation_type=activations,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            extra_options={"WeightSymmetric": True},
        )
        files[name] = path
    return files


def _nncf(fp32: Path, images: np.ndarray, threads: int, x: np.ndarray) -> Callable[[], object]:
    import nncf
    import openvino as ov

    core = ov.Core()
    quantized = nncf.quantize(core.read_model(str(fp32)), nncf.Dataset(list(images[:, None])))
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    request = core.compile_model(quantized, "CPU", config).create_infer_request()
    return lambda: request.infer({0: x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    size = args.image_size
    images = rng.standard_normal((64, 3, size, size)).astype(np.float32)
    x = images[:1]
    with tempfile.TemporaryDirectory() as tmp:
        exported = _export(args.arch, size, Path(tmp))
        calls = {"FP32 (onnxruntime)": _ort(exported["fp32"], x, args.threads)}
        calls["kdpipe's INT8 file (onnxruntime)"] = _ort(exported["int8"], x, args.threads)
        for name, path in _layouts(exported["fp32"], images, Path(tmp)).items():
            calls[f"{name} (onnxruntime)"] = _ort(path, x, args.threads)
        calls["kdpipe's INT8 file (OpenVINO)"] = _openvino(exported["int8"], x, args.threads, False)
        calls["NNCF PTQ of the FP32 file (OpenVINO)"] = _nncf(
            exported["fp32"], images, args.threads, x
        )
        p50s: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                p50s[name].append(_p50(call, args.seconds))
        layers = {
            runtime: view(exported["int8"], x, args.threads)
            for runtime, view in (
                ("onnxruntime", onnxruntime_layers),
                ("OpenVINO", openvino_layers),
            )
        }
    print(f"{args.arch}, {size} px, batch 1, {args.threads} threads; median of {args.rounds} p50s")
    print("| form | p50 ms |")
    print("|---|---|")
    for name, values in p50s.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    for runtime, rows in layers.items():
        print(f"\nkdpipe's INT8 file on {runtime}, one call by operator:")
        print("| operator | runs in | share |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['op']} | {r['precision']} | {100 * r['share']:.1f} % |")


if __name__ == "__main__":
    main()
