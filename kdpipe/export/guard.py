"""INT8 with an accuracy guard: keep the most sensitive layers in FP32 until the drop is allowed.

1. Quantize every op onnxruntime can (Conv/Gemm/MatMul and the weightless Add, Mul, pooling,
   ...); measure top-1 on the guard set (the validation split) against the FP32 ONNX model.
   Within `max_drop`: done.
2. Otherwise quantize the weight layers (Conv/Gemm/MatMul) alone: the weightless ops save no
   file size and can cost the most accuracy (MobileNetV3's hard-swish and squeeze-excite
   products in the symmetric TensorRT form: 11.7 pt). Within `max_drop`: done.
3. Otherwise rank the weight layers by sensitivity: quantize each one *alone* and measure how
   far the logits move from FP32 (mean squared difference on the guard set).
4. Keep the k most sensitive layers in FP32, with the smallest k (found by bisection) whose
   drop is within `max_drop`; the result says which layers were kept and why. k = all is
   the FP32 model again, so a limit >= 0 is always met.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from kdpipe.core import ui
from kdpipe.core.errors import ExportError
from kdpipe.core.runs import naming
from kdpipe.export.quantize import (
    ImageBatches,
    Int8Target,
    preprocess,
    quantizable_nodes,
    quantize_int8,
)
from kdpipe.runtimes.ort import ort_logits, ort_session


@dataclass(frozen=True)
class Calibration:
    """The images activation ranges are calibrated on, and how."""

    images: Dataset
    method: str = "minmax"  # minmax | entropy | percentile
    samples: int = 512
    seed: int = 0


def _top1(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


class _Quantizer:
    """One FP32 model quantized again and again with other layers left out. Ranges are
    calibrated once per op set: exclusions change what is quantized, not the ranges."""

    def __init__(
        self,
        fp32: Path,
        calibration: Calibration,
        target: Int8Target,
        reduce_range: bool | None,
        tmp: Path,
    ) -> None:
        self.pre, self.tmp = tmp / "pre.onnx", tmp
        preprocess(fp32, self.pre)
        self.reader = ImageBatches(calibration.images, calibration.samples, calibration.seed)
        self.method, self.target, self.reduce_range = calibration.method, target, reduce_range
        self.ranges = {True: tmp / "ranges-weight-layers.json", False: tmp / "ranges-all.json"}

    def write(self, path: Path, exclude: list[str], weight_layers_only: bool = True) -> dict:
        return quantize_int8(
            self.pre,
            path,
            self.reader,
            method=self.method,
            exclude=exclude,
            target=self.target,
            reduce_range=self.reduce_range,
            weight_layers_only=weight_layers_only,
            ranges=self.ranges[weight_layers_only],
        )


def quantize_with_guard(
    fp32: Path,
    out: Path,
    calibration: Calibration,
    guard_set: Dataset,
    max_drop: float,
    target: Int8Target = "onnxruntime",
    reduce_range: bool | None = None,
) -> dict:
    """Write an INT8 model at `out` whose guard-set top-1 is within `max_drop` of FP32, in the
    quantization scheme of the runtime `target` (quantize.py). The guard measures with
    onnxruntime on the CPU, also for the TensorRT form: its Q/DQ arithmetic is the same."""
    ref_logits, labels = ort_logits(ort_session(fp32), guard_set)
    ref_acc = _top1(ref_logits, labels)
    with naming(out), tempfile.TemporaryDirectory(dir=out.parent) as tmp_dir:
        q = _Quantizer(fp32, calibration, target, reduce_range, Path(tmp_dir))

        def drop_with(exclude: list[str], path: Path, weights: bool = True) -> tuple[float, dict]:
            settings = q.write(path, exclude, weights)
            logits, _ = ort_logits(ort_session(path), guard_set)
            return ref_acc - _top1(logits, labels), settings

        first_drop, settings = drop_with([], out, weights=False)
        guard = {
            "max_drop": max_drop,
            "guard_set": "val",
            "guard_samples": len(labels),
            "fp32_accuracy": ref_acc,
            "drop_all_int8": first_drop,
            "triggered": first_drop > max_drop,
            "kept_fp32": [],
            "final_drop": first_drop,
        }
        if first_drop <= max_drop:
            return {**settings, "guard": guard}
        layers_drop, settings = drop_with([], out)
        guard["drop_weight_layers_int8"] = layers_drop
        if layers_drop <= max_drop:
            guard["final_drop"] = layers_drop
            ui.info(
                f"export: INT8 drops {100 * first_drop:.2f} pt (> {100 * max_drop:.2f}); "
                f"{100 * layers_drop:.2f} pt with the weightless ops left in FP32"
            )
            return {**settings, "guard": guard}
        nodes = quantizable_nodes(q.pre)
        ui.info(
            f"export: INT8 drops {100 * first_drop:.2f} pt (> {100 * max_drop:.2f}), "
            f"{100 * layers_drop:.2f} pt on weight layers alone; ranking {len(nodes)} layers "
            "by sensitivity"
        )
        sensitivity = _sensitivity(q, nodes, guard_set, ref_logits)
        ranked = sorted(sensitivity, key=lambda n: -sensitivity[n])
        k, drop, settings = _fewest_in_fp32(ranked, drop_with, q.tmp, max_drop, first_drop, out)
        guard.update(
            kept_fp32=[
                {"node": n, "sensitivity_mse": sensitivity[n], "rank": i + 1}
                for i, n in enumerate(ranked[:k])
            ],
            final_drop=drop,
            layers_ranked=len(ranked),
        )
        ui.info(
            f"export: kept {k} of {len(ranked)} layers in FP32; INT8 drop now "
            f"{100 * drop:.2f} pt on the validation split"
        )
        return {**settings, "guard": guard}


def _sensitivity(
    q: _Quantizer, nodes: list[str], guard_set: Dataset, ref_logits: Tensor
) -> dict[str, float]:
    """How far quantizing each weight layer alone moves the logits from FP32 (mean squared
    difference on the guard set)."""
    probe = q.tmp / "probe.onnx"
    sensitivity: dict[str, float] = {}
    for node in nodes:
        q.write(probe, [n for n in nodes if n != node])
        logits, _ = ort_logits(ort_session(probe), guard_set)
        sensitivity[node] = float(((logits - ref_logits) ** 2).mean())
    return sensitivity


def _fewest_in_fp32(
    ranked: list[str],
    drop_with: Callable[[list[str], Path], tuple[float, dict]],
    tmp: Path,
    max_drop: float,
    first_drop: float,
    out: Path,
) -> tuple[int, float, dict]:
    """The smallest k whose k most sensitive layers kept in FP32 meet `max_drop`, found by
    bisection and written at `out`: (k, its drop, its settings). k = all is FP32 again."""
    lo, hi, best = 1, len(ranked), None
    while lo <= hi:
        k = (lo + hi) // 2
        candidate = tmp / f"k{k}.onnx"
        drop, settings = drop_with(ranked[:k], candidate)
        if drop <= max_drop:
            best, hi = (k, drop, candidate, settings), k - 1
        else:
            lo = k + 1
    if best is None:  # only when max_drop < 0: k = all is the FP32 model
        raise ExportError(
            f"INT8 cannot meet --max-accuracy-drop {100 * max_drop:.2f} pt even with every "
            f"layer in FP32 (all-INT8 drop {100 * first_drop:.2f} pt)",
            "raise --max-accuracy-drop, or use more --calibration-samples",
        )
    k, drop, candidate, settings = best
    candidate.replace(out)
    return k, drop, settings
