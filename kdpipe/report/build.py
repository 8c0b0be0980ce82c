"""The run's Report (report/model.py) from the results of its stages: headline ratios, and
the teacher's and student's facts from the profile."""

from __future__ import annotations

import time
from typing import Any

from kdpipe import __version__
from kdpipe.core.config import RunConfig
from kdpipe.data import DataInfo
from kdpipe.report import shipping
from kdpipe.report.metrics import flatten_metrics
from kdpipe.report.model import (
    SCHEMA_VERSION,
    ExportResult,
    LatencyRow,
    ModelRow,
    Report,
    RunInfo,
    StageTime,
    StudentSummary,
    Summary,
    TeacherSummary,
)


def _model_row(profile: dict, model: str, backend: str, precision: str) -> dict:
    for row in profile["models"]:
        if (row["model"], row["backend"], row["precision"]) == (model, backend, precision):
            return row
    raise KeyError((model, backend, precision))


def _p50(profile: dict, model: str, backend: str, precision: str, bs: int) -> float | None:
    for e in profile["latency"]:
        if (e["model"], e["backend"], e["precision"], e["batch_size"]) == (
            model,
            backend,
            precision,
            bs,
        ):
            return shipping.ratio_p50(e)
    return None


def _same_backend(profile: dict, backend: str, bs: int) -> float | None:
    """Teacher p50 / student p50 with both in `backend` FP32: the architecture's gain alone."""
    t = _p50(profile, "teacher", backend, "fp32", bs)
    s = _p50(profile, "student", backend, "fp32", bs)
    return t / s if t and s else None


def summarize(profile: dict, max_drop: float, ship_batch: int) -> dict:
    """Headline ratios: accuracy retention, speedup at the smallest batch, size/FLOPs compression,
    and the form to ship (shipping.py). The speedup sets the student's fastest form against the
    teacher's fastest form (each on whichever backend and precision measured quickest within
    the allowed accuracy drop), so a runtime change alone (torch eager -> onnxruntime) is not
    counted as the student's gain when the teacher was timed on that runtime too."""
    teacher = _model_row(profile, "teacher", "torch-cpu", "fp32")
    student = _model_row(profile, "student", "torch-cpu", "fp32")
    bs = min(e["batch_size"] for e in profile["latency"])
    forms = {m: shipping.fastest_forms(profile, m, max_drop) for m in ("teacher", "student")}
    t, s = (next(f for f in forms[m] if f["batch_size"] == bs) for m in ("teacher", "student"))
    t_p50, best_ms = t["interleaved_p50_ms"], s["interleaved_p50_ms"]
    smallest = min(r["size_bytes"] for r in profile["models"] if r["model"] == "student")
    return {
        "accuracy_retention": student["accuracy"] / teacher["accuracy"]
        if teacher["accuracy"]
        else 0.0,
        "accuracy_drop": teacher["accuracy"] - student["accuracy"],
        "speedup_vs_teacher": (t_p50 / best_ms) if t_p50 and best_ms else None,
        "speedup_basis": {
            "batch_size": bs,
            "teacher": {"backend": t["backend"], "precision": t["precision"], "p50_ms": t_p50},
            "student": {"backend": s["backend"], "precision": s["precision"], "p50_ms": best_ms},
            "measured": "interleaved in one run",
        },
        "torch_speedup_vs_teacher": _same_backend(profile, "torch-cpu", bs),
        "ort_speedup_vs_teacher": _same_backend(profile, "ort-cpu", bs),
        "param_compression": teacher["params"] / student["params"],
        "flops_compression": teacher["flops"] / student["flops"] if student["flops"] else None,
        "size_compression": teacher["size_bytes"] / smallest,
        "fastest_forms": forms["student"],
        "shipped": shipping.shipped_form(profile, max_drop, ship_batch),
        "upsets": shipping.upsets(profile, ship_batch),
    }


def build_report(
    cfg: RunConfig,
    info: DataInfo,
    teacher_metrics: dict,
    distill_metrics: dict,
    export: ExportResult,
    profile: dict,
    stages: dict,
    extra: dict[str, Any],
) -> Report:
    """`extra`: the fields that exist only for some runs (teacher_onnx, tensorrt)."""
    t_row = _model_row(profile, "teacher", "torch-cpu", "fp32")
    s_row = _model_row(profile, "student", "torch-cpu", "fp32")
    onnx = {"onnx": extra["teacher_onnx"]} if extra.get("teacher_onnx") is not None else {}
    report = Report(
        kdpipe_version=__version__,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        run=RunInfo(
            name=cfg.run_name(), out=str(cfg.out_dir()), config=cfg.model_dump(mode="json")
        ),
        data=info.to_dict(),
        teacher=TeacherSummary(
            arch=cfg.teacher.arch,
            **{k: t_row[k] for k in ("accuracy", "params", "flops", "size_bytes")},
            source=teacher_metrics.get("source"),
            train_seconds=teacher_metrics.get("train_seconds"),
            **onnx,
        ),
        student=StudentSummary(
            arch=cfg.student.arch,
            method=distill_metrics["method"],
            method_params=distill_metrics["params"],
            **{
                k: s_row[k]
                for k in ("accuracy", "agreement_with_teacher", "params", "flops", "size_bytes")
            },
            train_seconds=distill_metrics["train_seconds"],
            teacher_cache=distill_metrics["teacher_cache"],
            teacher_cache_source=distill_metrics.get("teacher_cache_source"),
            teacher_precision=distill_metrics.get("teacher_precision", "fp32"),
            history=distill_metrics["history"],
        ),
        export=export.root,
        models=[ModelRow(**row) for row in profile["models"]],
        latency=[LatencyRow(**e) for e in profile["latency"]],
        layers=profile.get("layers", {}),
        summary=Summary(
            **summarize(profile, cfg.export.max_accuracy_drop / 100, cfg.profile.ship_batch)
        ),
        skipped_backends=profile.get("skipped_backends", []),
        profile_settings=profile["settings"],
        environment=profile["environment"],
        stages={k: StageTime(**v) for k, v in stages.items()},
        tensorrt=extra.get("tensorrt", {}),
    )
    report.schema_version = SCHEMA_VERSION  # set, so that report.json lists it
    report.metrics = flatten_metrics(report.as_json())
    return report
