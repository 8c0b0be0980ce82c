"""Where one call's time goes, by operator type and the precision it ran in: onnxruntime's
profiler and OpenVINO's per-layer counters, read the way each runtime reports them. Shown for
the form a run ships, so a user can see why INT8 is slow (float operators left between
quantized ones, Quantize/Dequantize pairs, a first convolution on 3 channels).
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kdpipe.runtimes.openvino import OvPredict

CALLS = 10  # profiled calls, after as many untimed ones
SHOWN = 8  # operator types a summary keeps
# onnxruntime kernels that compute in integers (and every QLinear* one: QLinearAdd, ...);
# Quantize/Dequantize convert at their edges
INT8_OPS = {"ConvInteger", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul"}
CONVERSIONS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def onnxruntime_layers(path: Path, x: np.ndarray, threads: int) -> list[dict]:
    """Per operator type: mean ms per call, share of the call, precision, node count."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.log_severity_level = threads, 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling, opts.profile_file_prefix = True, str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(2 * CALLS):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    rows = [(e["args"]["op_name"], _ort_precision(e["args"]["op_name"]), e["dur"]) for e in kernels]
    return summarize(rows, 2 * CALLS, unit_ms=1e-3)  # the profiler counts µs


def openvino_layers(path: Path, x: np.ndarray, threads: int) -> list[dict]:
    """As onnxruntime_layers, from OpenVINO's counters (the kernel names its precision)."""
    counted = OvPredict(path, threads, counters=True)
    rows: list[tuple[str, str, float]] = []
    for _ in range(CALLS):
        counted.request.infer({0: x})
    for _ in range(CALLS):
        counted.request.infer({0: x})
        rows += [(r["type"], _ov_precision(r["kernel"]), r["ms"]) for r in counted.layer_times()]
    return summarize(rows, CALLS, unit_ms=1.0)


def summarize(rows: list[tuple[str, str, float]], calls: int, unit_ms: float) -> list[dict]:
    """(operator type, precision, time in units of `unit_ms`) per node run over `calls` calls
    -> the SHOWN costliest (type, precision) groups: ms per call, share of the operator time,
    nodes per call."""
    time: dict[tuple[str, str], float] = defaultdict(float)
    count: dict[tuple[str, str], int] = defaultdict(int)
    for op, precision, t in rows:
        time[(op, precision)] += t
        count[(op, precision)] += 1
    total = sum(time.values()) or 1.0
    return [
        {
            "op": op,
            "precision": precision,
            "ms": time[(op, precision)] * unit_ms / calls,
            "share": time[(op, precision)] / total,
            "nodes": count[(op, precision)] // calls,
        }
        for op, precision in sorted(time, key=lambda k: -time[k])[:SHOWN]
    ]


def _ort_precision(op: str) -> str:
    if op in INT8_OPS or op.startswith("QLinear"):
        return "int8"
    return "convert" if op in CONVERSIONS else "fp32"


def _ov_precision(kernel: str) -> str:
    """OpenVINO names a kernel with its precision: brgconv_avx512_amx_I8, jit_avx512_bf16, ..."""
    k = kernel.lower()
    for tag, precision in (("i8", "int8"), ("u8", "int8"), ("bf16", "bf16"), ("f16", "fp16")):
        if k.endswith(tag) or f"_{tag}_" in k:
            return precision
    return "fp32"
