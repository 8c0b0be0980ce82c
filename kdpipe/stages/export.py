"""The export stage: student -> ONNX FP32, FP16, guarded INT8 (and TensorRT engines where
possible), each verified against PyTorch on real test images, plus the edge bundle."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from kdpipe.core import cache, ui
from kdpipe.core.config import RunConfig
from kdpipe.core.runs import fingerprint, read_json, write_json
from kdpipe.data import DataSplits
from kdpipe.export import teacher_cache
from kdpipe.export.bundle import write_bundle
from kdpipe.export.fp16 import convert_fp16
from kdpipe.export.guard import Calibration, quantize_with_guard
from kdpipe.export.onnx import export_onnx
from kdpipe.export.quantize import Int8Target
from kdpipe.export.verify import parity, parity_subset
from kdpipe.report.model import ExportResult
from kdpipe.runtimes import openvino, tensorrt
from kdpipe.runtimes.accuracy import call_logits, predict_logits
from kdpipe.runtimes.ort import ort_logits, ort_session
from kdpipe.stages.base import Context, Stage
from kdpipe.stages.teacher import cached_teacher_dir

FILES = {"fp32": "student.onnx", "fp16": "student.fp16.onnx", "int8": "student.int8.onnx"}
# The INT8 engine's source when TensorRT is asked for: symmetric Q/DQ, the only form TensorRT
# accepts; student.int8.onnx is quantized for onnxruntime's CPU kernels (quantize.py).
TENSORRT_INT8 = "student.int8.tensorrt.onnx"
TEACHER_ONNX = "teacher.onnx"
# FP32 ONNX must match PyTorch: the design's bar for a correct export.
FP32_MIN_AGREEMENT = 0.999


def run_export_stage(
    cfg: RunConfig,
    data: DataSplits,
    student: nn.Module,
    stage_dir: Path,
    teacher: nn.Module | None = None,
    teacher_dir: Path | None = None,
) -> ExportResult:
    """Write the ONNX files, bundle.json and export.json (parity and accuracy of each), and
    with a `teacher` (and `export.teacher`) teacher.onnx with its parity in teacher.json;
    `teacher_dir`, the cached teacher's folder, keeps teacher.onnx for later runs."""
    e = cfg.export
    check_set = parity_subset(data.test, e.parity_samples)
    if teacher is not None and e.teacher:
        cached = teacher_cache.cached_onnx(teacher_dir, data.info, e.opset)
        facts = export_teacher(teacher, data, check_set, stage_dir, e.opset, cached)
        write_json(stage_dir / "teacher.json", facts)
    reference, labels = predict_logits(student, check_set)
    fp32_path = stage_dir / FILES["fp32"]
    ui.info(f"export: ONNX FP32 -> {fp32_path}")
    how = export_onnx(student, data.info, fp32_path, e.opset)
    results: dict[str, dict] = {}
    for precision in e.precisions:
        path = stage_dir / FILES[precision]
        settings: dict = {}
        if precision == "fp16":
            ui.info(f"export: FP16 (float32 inputs/outputs kept) -> {path}")
            settings = {"conversion": convert_fp16(fp32_path, path)}
        elif precision == "int8":
            settings = {"quantization": _int8(cfg, data, fp32_path, path, "onnxruntime")}
            if "tensorrt" in e.backends:
                trt_path = stage_dir / TENSORRT_INT8
                trt = _int8(cfg, data, fp32_path, trt_path, "tensorrt")
                settings["tensorrt_onnx"] = {
                    **_checked(trt_path, check_set, reference, labels),
                    "quantization": trt,
                }
        results[precision] = {**_checked(path, check_set, reference, labels), **how, **settings}
    fp32 = results["fp32"]["parity"]
    _warn_if_disagrees("ONNX FP32", fp32)
    for name, r in results.items():
        r["accuracy_drop_vs_fp32"] = fp32["accuracy"] - r["parity"]["accuracy"]
        ui.info(
            f"export: {name} max|dlogit|={r['parity']['max_abs_diff']:.2e} "
            f"agreement={r['parity']['top1_agreement']:.4f} accuracy={r['parity']['accuracy']:.4f}"
        )
    engines = (
        _tensorrt_engines(cfg, data, stage_dir, check_set, reference, labels)
        if "tensorrt" in e.backends
        else {}
    )
    write_json(stage_dir / "tensorrt.json", engines)
    bundle = write_bundle(stage_dir, data.info, results, cfg.out_dir())
    exported = ExportResult.model_validate(results)
    write_json(stage_dir / "export.json", exported.as_json())
    ui.info(f"export: bundle {stage_dir / 'bundle.json'} ({len(bundle['models'])} models)")
    return exported


def export_teacher(
    teacher: nn.Module,
    data: DataSplits,
    check_set: Dataset,
    stage_dir: Path,
    opset: int | None,
    cached: Path | None = None,
) -> dict:
    """teacher.onnx (FP32), checked against the teacher in PyTorch like the student's files.
    With `cached` (teacher_cache.cached_onnx) a file kept by an earlier run is reused if it
    passes that check, and a fresh export that passes is kept there."""
    path = stage_dir / TEACHER_ONNX
    reference, labels = predict_logits(teacher.eval(), check_set)
    if cached is not None and (how := teacher_cache.reuse(cached, path)) is not None:
        # onnxruntime refuses a damaged file with many error types: read back like any entry
        where = f"the kept teacher ONNX {cached}"
        checked = cache.read_back(
            "export",
            where,
            "exporting it again",
            lambda: _checked(path, check_set, reference, labels),
        )
        if checked is not None and teacher_cache.reusable(checked["parity"], FP32_MIN_AGREEMENT):
            ui.info(f"export: teacher ONNX FP32 reused from {cached} -> {path}")
            return {**checked, **how, "reused": True}
    ui.info(f"export: teacher ONNX FP32 (to time it on onnxruntime too) -> {path}")
    how = export_onnx(teacher, data.info, path, opset)
    checked = _checked(path, check_set, reference, labels)
    _warn_if_disagrees("teacher ONNX FP32", checked["parity"])
    if cached is not None and teacher_cache.reusable(checked["parity"], FP32_MIN_AGREEMENT):
        teacher_cache.keep(path, how, cached)
    return {**checked, **how}


def _warn_if_disagrees(what: str, parity: dict) -> None:
    if parity["top1_agreement"] < FP32_MIN_AGREEMENT:
        ui.warn(f"{what} agrees with PyTorch on only {parity['top1_agreement']:.2%} of test images")


def _checked(path: Path, check_set: Dataset, reference: Tensor, labels: Tensor) -> dict:
    """File, size and parity with PyTorch of one exported ONNX file on onnxruntime, and on
    OpenVINO where it runs here (with the precision it computes in)."""
    logits, _ = ort_logits(ort_session(path), check_set)
    checked = {
        "file": path.name,
        "size_bytes": path.stat().st_size,
        "parity": parity(reference, logits, labels),
    }
    if openvino.unavailable_reason() is None:
        ov = openvino.OvPredict(path, torch.get_num_threads())
        logits, _ = call_logits(ov, check_set)
        checked["openvino"] = {
            "inference_precision": ov.precision,
            "parity": parity(reference, logits, labels),
        }
    return checked


def _int8(cfg: RunConfig, data: DataSplits, fp32: Path, out: Path, target: Int8Target) -> dict:
    """The guarded INT8 file for `target` (onnxruntime's CPU kernels, or TensorRT)."""
    e = cfg.export
    ui.info(
        f"export: INT8 QDQ for {target}, {e.calibration} calibration on "
        f"{e.calibration_samples} training images, max drop {e.max_accuracy_drop} pt -> {out}"
    )
    return quantize_with_guard(
        fp32,
        out,
        Calibration(data.train, e.calibration, e.calibration_samples, cfg.seed),
        data.val,
        e.max_accuracy_drop / 100,
        target,
        e.int8_reduce_range,
    )


def _tensorrt_engines(
    cfg: RunConfig,
    data: DataSplits,
    stage_dir: Path,
    check_set: Dataset,
    reference: Tensor,
    labels: Tensor,
) -> dict:
    """One engine per exported precision, each checked against PyTorch like the ONNX files,
    or a one-line skip saying why."""
    reason = tensorrt.unavailable_reason()
    if reason:
        ui.info(f"export: TensorRT skipped: {reason}")
        return {"skipped": reason}
    engines = {}
    for precision in cfg.export.precisions:
        plan = stage_dir / FILES[precision].replace(".onnx", ".plan")
        ui.info(f"export: TensorRT {precision} engine -> {plan}")
        source = TENSORRT_INT8 if precision == "int8" else FILES[precision]
        engines[precision] = tensorrt.build_engine(
            stage_dir / source,
            plan,
            data.info.input_size,
            cfg.export.batch_range,
            precision,
            stage_dir / "tensorrt.timing-cache",
        )
        # Largest batch the engine's profile allows, so every check batch fits.
        runner = tensorrt.TensorRTRunner(plan)
        batch = cfg.export.batch_range[-1]
        logits = [
            runner(x.cuda()).float().cpu() for x, _ in DataLoader(check_set, batch_size=batch)
        ]
        engines[precision]["parity"] = parity(reference, torch.cat(logits), labels)
    return engines


class ExportStage(Stage):
    """The student as ONNX in every precision asked (and TensorRT engines where they build),
    the teacher as ONNX, each checked against PyTorch, and the edge bundle."""

    name = "export"

    def fingerprint(self, ctx: Context) -> str:
        return fingerprint("export", ctx.fingerprints["distill"], ctx.cfg.export.model_dump())

    def outputs(self, ctx: Context) -> list[str]:
        e = ctx.cfg.export
        names = [FILES[p] for p in e.precisions]
        if "int8" in e.precisions and "tensorrt" in e.backends:
            names.append(TENSORRT_INT8)
        if e.teacher:
            names += [TEACHER_ONNX, "teacher.json"]
        # bundle.json is not among them: the report stage rewrites it naming the form to ship
        return [*names, "export.json", "labels.txt", "tensorrt.json"]

    def run(self, ctx: Context, folder: Path) -> ExportResult:
        teacher = ctx.results["teacher"].model
        cached = cached_teacher_dir(ctx.cfg, ctx.fingerprints["teacher"])
        student = ctx.results["distill"].student
        return run_export_stage(ctx.cfg, ctx.data, student, folder, teacher, cached)

    def load(self, ctx: Context, folder: Path) -> ExportResult:
        return ExportResult.model_validate(read_json(folder / "export.json"))

    def summary(self, result: ExportResult) -> dict:
        return result.as_json()


STAGE = ExportStage()
