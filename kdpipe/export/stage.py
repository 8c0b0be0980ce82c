"""The export stage: student -> ONNX FP32 (+ INT8), each verified against PyTorch on test images."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kdpipe import ui
from kdpipe.config import RunConfig
from kdpipe.data import DataSplits
from kdpipe.export.onnx import export_onnx
from kdpipe.export.quantize import quantize_int8
from kdpipe.export.verify import ort_logits, ort_session, parity, parity_subset
from kdpipe.profile.accuracy import predict_logits
from kdpipe.runs import write_json

FILES = {"fp32": "student.onnx", "int8": "student.int8.onnx"}
# FP32 ONNX must match PyTorch: the design's bar for a correct export.
FP32_MIN_AGREEMENT = 0.999


def run_export_stage(cfg: RunConfig, data: DataSplits, student: nn.Module, stage_dir: Path) -> dict:
    """Write the ONNX files and export.json (parity and accuracy of each precision)."""
    e = cfg.export
    check_set = parity_subset(data.test, e.parity_samples)
    reference, labels = predict_logits(student, check_set)
    results: dict[str, dict] = {}
    fp32_path = stage_dir / FILES["fp32"]
    ui.info(f"export: ONNX FP32 -> {fp32_path}")
    how = export_onnx(student, data.info, fp32_path, e.opset)
    for precision in e.precisions:
        path = stage_dir / FILES[precision]
        if precision == "int8":
            ui.info(
                f"export: INT8 QDQ, calibrated on {e.calibration_samples} training images -> {path}"
            )
            how = {
                **how,
                "quantization": quantize_int8(
                    fp32_path, path, data.train, e.calibration_samples, cfg.seed
                ),
            }
        logits, _ = ort_logits(ort_session(path), check_set)
        check = parity(reference, logits, labels)
        results[precision] = {
            "file": path.name,
            "size_bytes": path.stat().st_size,
            "parity": check,
            **how,
        }
    fp32 = results["fp32"]["parity"]
    if fp32["top1_agreement"] < FP32_MIN_AGREEMENT:
        ui.warn(
            f"ONNX FP32 agrees with PyTorch on only {fp32['top1_agreement']:.2%} of test images"
        )
    for name, r in results.items():
        r["accuracy_drop_vs_fp32"] = fp32["accuracy"] - r["parity"]["accuracy"]
        ui.info(
            f"export: {name} max|dlogit|={r['parity']['max_abs_diff']:.2e} "
            f"agreement={r['parity']['top1_agreement']:.4f} accuracy={r['parity']['accuracy']:.4f}"
        )
    write_json(stage_dir / "export.json", results)
    return results
