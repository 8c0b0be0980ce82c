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


def _top1(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def quantize_with_guard(
    fp32: Path,
    out: Path,
    calibration: Dataset,
    guard_set: Dataset,
    method: str,
    samples: int,
    seed: int,
    max_drop: float,
    target: Int8Target = "onnxruntime",
    reduce_range: bool | None = None,
) -> dict:
    """Write an INT8 model at `out` whose guard-set top-1 is within `max_drop` of FP32, in the
    quantization scheme of the runtime `target` (quantize.py). The guard measures with
    onnxruntime on the CPU, also for the TensorRT form: its Q/DQ arithmetic is the same."""
    ref_logits, labels = ort_logits(ort_session(fp32), guard_set)
    ref_acc = _top1(ref_logits, labels)
    reader = ImageBatches(calibration, samples, seed)
    with naming(out), tempfile.TemporaryDirectory(dir=out.parent) as tmp_dir:
        tmp = Path(tmp_dir)
        pre = tmp / "pre.onnx"
        preprocess(fp32, pre)

        # Calibrated once per op set: exclusions change what is quantized, not the ranges.
        ranges = {True: tmp / "ranges-weight-layers.json", False: tmp / "ranges-all.json"}

        def drop_with(exclude: list[str], path: Path, weights: bool = True) -> tuple[float, dict]:
            settings = quantize_int8(
                pre, path, reader, method, exclude, target, reduce_range, weights, ranges[weights]
            )
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
        nodes = quantizable_nodes(pre)
        ui.info(
            f"export: INT8 drops {100 * first_drop:.2f} pt (> {100 * max_drop:.2f}), "
            f"{100 * layers_drop:.2f} pt on weight layers alone; ranking {len(nodes)} layers "
            "by sensitivity"
        )
        sensitivity: dict[str, float] = {}
        probe = tmp / "probe.onnx"
        for node in nodes:
            others = [n for n in nodes if n != node]
            quantize_int8(
                pre, probe, reader, method, others, target, reduce_range, True, ranges[True]
            )
            logits, _ = ort_logits(ort_session(probe), guard_set)
            sensitivity[node] = float(((logits - ref_logits) ** 2).mean())
        ranked = sorted(nodes, key=lambda n: -sensitivity[n])
        # Smallest k whose drop is within the limit; k = all layers is FP32 again (drop ~0).
        lo, hi, best = 1, len(ranked), None
        while lo <= hi:
            k = (lo + hi) // 2
            candidate = tmp / f"k{k}.onnx"
            drop, k_settings = drop_with(ranked[:k], candidate)
            if drop <= max_drop:
                best, hi = (k, drop, candidate, k_settings), k - 1
            else:
                lo = k + 1
        if best is None:  # only when max_drop < 0: k = all is the FP32 model
            raise ExportError(
                f"INT8 cannot meet --max-accuracy-drop {100 * max_drop:.2f} pt even with every "
                f"layer in FP32 (all-INT8 drop {100 * first_drop:.2f} pt)",
                "raise --max-accuracy-drop, or use more --calibration-samples",
            )
        k, drop, candidate, settings = best  # type: ignore[misc]
        candidate.replace(out)
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
