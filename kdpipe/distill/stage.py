"""The distill stage: build the student and the method's Distiller, train, save a plain state_dict."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from kdpipe import models, ui
from kdpipe.config import RunConfig
from kdpipe.data import DataSplits
from kdpipe.distill.cache import teacher_logits_table
from kdpipe.distill.methods import get as get_method
from kdpipe.distill.trainer import fit
from kdpipe.profile.accuracy import agreement, predict_logits, top1
from kdpipe.runs import write_json
from kdpipe.teacher import save_state


def build_student(cfg: RunConfig, num_classes: int) -> nn.Module:
    return models.create(cfg.student.arch, num_classes, cfg.student.weights)


def run_distill_stage(
    cfg: RunConfig, data: DataSplits, teacher: nn.Module, stage_dir: Path
) -> tuple[nn.Module, dict]:
    """Train the student with cfg.distill.method; write student.pt, log.jsonl and metrics.json."""
    d = cfg.distill
    method = get_method(d.method)
    student = build_student(cfg, data.info.num_classes)
    distiller = method(student, teacher if method.needs_teacher else None, **d.params)
    cache = None
    if method.needs_teacher and method.logits_only and d.cache_teacher and data.deterministic:
        cache = teacher_logits_table(teacher, data.train)
        ui.info(
            f"distill: teacher logits cached for {len(cache)} training images "
            "(computed once, reused every epoch)"
        )
    result = fit(
        distiller,
        data.train,
        data.val,
        d.train,
        cfg.seed,
        f"distill {cfg.student.arch} ({d.method})",
        log_path=stage_dir / "log.jsonl",
        teacher_cache=cache,
        workers=cfg.data.workers,
    )
    student = distiller.student().eval()
    save_state(student, stage_dir / "student.pt")
    s_logits, labels = predict_logits(student, data.test)
    t_logits, _ = predict_logits(teacher, data.test)
    metrics = {
        "method": d.method,
        "params": distiller.params,
        "arch": cfg.student.arch,
        "teacher_cache": cache is not None,
        "train_seconds": result.seconds,
        "images_per_s": result.images_per_s,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": top1(s_logits, labels),
        "agreement_with_teacher": agreement(s_logits, t_logits),
        "history": result.history,
    }
    write_json(stage_dir / "metrics.json", metrics)
    return student, metrics
