"""The distill stage: build the student and the method's Distiller, train, save a plain state_dict.

Multi-model methods are driven from here: TAKD trains its assistant chain link by link (each
link cached by fingerprint), DML builds its peers and exports the best one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from kdpipe import models
from kdpipe.core import ui
from kdpipe.core.config import RunConfig, model_label
from kdpipe.core.runs import file_sha256, fingerprint, read_json, write_json
from kdpipe.data import DataSplits, augment
from kdpipe.data.transfer import student_training_set
from kdpipe.distill.base import Distiller, Layers
from kdpipe.distill.cache import TeacherTable, teacher_outputs
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.compose import Composite
from kdpipe.distill.methods import get as get_method
from kdpipe.distill.stepper import Runtime, training_numerics
from kdpipe.distill.trainer import fit, predict_test
from kdpipe.models.custom import sources
from kdpipe.parallel import distributed
from kdpipe.runtimes.accuracy import agreement, top1, warn_near_chance
from kdpipe.stages.base import Context, Stage
from kdpipe.stages.teacher import save_state


def distill_fingerprint(cfg: RunConfig, teacher_fp: str) -> str:
    """Everything that shapes the student: the teacher, the student's own start, the method,
    the data, the seed, the precisions it trains and the teacher infers in, and the content of
    any model file involved."""
    d = cfg.distill
    s = cfg.student
    s_weights = file_sha256(models.weights_file(s.arch, s.weights)) if s.weights else None
    return fingerprint(
        "distill",
        teacher_fp,
        cfg.student.arch,
        s_weights,
        d.model_dump(),
        cfg.data.content(),
        cfg.seed,
        training_numerics(cfg.runtime, with_teacher=True),
        *sources(cfg.student.arch, *d.peers, *d.assistants),
    )


def build_student(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The student, from --student-weights when given: weights trained for other classes
    (torchvision's ImageNet weights) start everything but a fresh classifier."""
    s = cfg.student
    if s.weights is None:
        return models.create(s.arch, num_classes)
    model, fresh = models.create_pretrained(s.arch, num_classes, s.weights)
    if fresh:
        label = models.weights_label(s.arch, s.weights)
        ui.info(f"student: {s.arch} from {label}, its classifier a fresh {num_classes}-class one")
    return model


def build_distiller(
    cfg: RunConfig, student: nn.Module, teacher: nn.Module | None, data: DataSplits
) -> Distiller:
    d = cfg.distill
    shape, layers = data.info.input_size, Layers(d.teacher_layers, d.student_layers)
    if d.terms:
        parts = {m: get_method(m) for m in d.terms}
        return Composite(
            student, teacher, parts, d.terms, d.params, input_shape=shape, layers=layers
        )
    method = get_method(d.method)
    return method(
        student,
        teacher if method.takes_teacher(d.params) else None,
        input_shape=shape,
        layers=layers,
        params=d.params,
        **method.built_with(d, cfg.student.arch, data.info.num_classes),
    )


def _train(
    cfg: RunConfig,
    distiller: Distiller,
    data: DataSplits,
    train: Dataset,
    teacher: nn.Module | None,
    desc: str,
    log_path: Path,
    checkpoint: Checkpointing,
):  # type: ignore[no-untyped-def]
    # a transfer folder is decoded per sample, whatever the labeled data is
    in_memory = data.in_memory and cfg.distill.transfer in (None, "mix")
    runtime = Runtime.from_config(cfg.runtime, cfg.data.workers, in_memory)
    if teacher is not None:
        teacher.to(runtime.device)
    if runtime.compile:
        if distiller.logits_only:
            distiller.student().compile()  # in place: state_dict keys stay those of the model
        else:
            ui.info("note: --compile skipped: feature taps need the student in eager mode")
    table: TeacherTable | None = None
    # only logits are cached, and only the teacher's
    cacheable = (
        teacher is not None
        and distiller.logits_only
        and distiller.needs_teacher
        and cfg.distill.cache_teacher
    )
    if cacheable and data.deterministic:
        assert teacher is not None
        table = teacher_outputs(
            teacher, train, data.info.num_classes, runtime.teacher_dtype, runtime.workers
        )
        where = {
            "disk": f"read from {table.path}",
            "computed": f"computed once, stored in {table.path}" if table.path else "computed once",
        }[table.source]
        ui.info(
            f"distill: teacher logits for {len(table.logits)} training images {where} "
            f"({table.seconds:.1f} s), reused every epoch"
        )
    elif cacheable:  # but no sample is the same twice
        ui.info(f"distill: the teacher runs on every batch (--augment {cfg.data.augment})")
    result = fit(
        distiller,
        train,
        data.val,
        cfg.distill.train,
        cfg.seed,
        desc,
        log_path=log_path,
        teacher_cache=table.logits if table else None,
        runtime=runtime,
        checkpoint=checkpoint,
        augment=augment.for_training(
            cfg.data.augment, data.info, train, cfg.seed, cfg.data.crop_scale
        ),
    )
    return result, table


def _assistant_chain(
    cfg: RunConfig,
    data: DataSplits,
    teacher: nn.Module,
    train: Dataset,
    stage_dir: Path,
    method: type[Distiller],
) -> tuple[nn.Module, list[dict]]:
    """teacher -> assistant_1 -> ... -> assistant_n, each link distilled by `method` (TAKD);
    returns the last assistant."""
    k = data.info.num_classes
    links = []
    upstream = fingerprint(
        method.name, cfg.teacher.model_dump(mode="json"), cfg.seed, *sources(cfg.teacher.arch)
    )
    for arch in cfg.distill.assistants:
        models.check_name(arch)
        upstream = fingerprint(
            upstream,
            arch,
            cfg.distill.model_dump(mode="json"),
            cfg.data.content(),
            training_numerics(cfg.runtime, with_teacher=True),
            *sources(arch),
        )
        path = stage_dir / "assistants" / f"{model_label(arch)}-{upstream}.pt"
        assistant = models.create(arch, k, path if path.is_file() else None)
        if path.is_file():
            ui.info(f"distill: assistant {arch} reused from {path}")
            links.append({"arch": arch, "reused": True})
        else:
            d = method(
                assistant, teacher, input_shape=data.info.input_size, params=cfg.distill.params
            )
            result, _ = _train(
                cfg,
                d,
                data,
                train,
                teacher,
                f"assistant {arch} ({method.name})",
                path.with_suffix(".jsonl"),
                Checkpointing(path.with_suffix(".ckpt"), upstream, cfg.runtime.checkpoint_every),
            )
            save_state(assistant, path)
            links.append({"arch": arch, "reused": False, "val_accuracy": result.val_accuracy})
        teacher = assistant.eval()
    return teacher, links


def run_distill_stage(
    cfg: RunConfig, data: DataSplits, teacher: nn.Module, stage_dir: Path, fp: str
) -> tuple[nn.Module, dict]:
    """Train the student with the configured method; write student.pt, log.jsonl, metrics.json."""
    d = cfg.distill
    train = student_training_set(
        data.train, data.info, d.label_fraction, d.transfer, d.transfer_size, cfg.seed
    )
    if len(train) != len(data.train):  # type: ignore[arg-type]
        ui.info(f"distill: {len(train)} training images incl. the transfer set")  # type: ignore[arg-type]
    notes: dict = {}
    # The student's initialization must not depend on whether the teacher was trained in this
    # process or came from the cache (training draws from the global generator).
    torch.manual_seed(cfg.seed)
    link_teacher = teacher
    if not d.terms and get_method(d.method).uses_assistants:
        link_teacher, notes["assistants"] = _assistant_chain(
            cfg, data, teacher, train, stage_dir, get_method(d.method)
        )
    student = build_student(cfg, data.info.num_classes)
    distiller = build_distiller(cfg, student, link_teacher, data)
    result, table = _train(
        cfg,
        distiller,
        data,
        train,
        distiller.teacher_model,
        f"distill {cfg.student.arch} ({d.method_label()})",
        stage_dir / "log.jsonl",
        Checkpointing(stage_dir / "checkpoints" / "last.pt", fp, cfg.runtime.checkpoint_every),
    )
    notes.update(distiller.finish(data.val))
    student = distiller.student().eval()
    arch = notes.get("exported_arch", cfg.student.arch)
    save_state(student, stage_dir / "student.pt")
    s_logits, labels = predict_test(student, data, cfg.data.workers)
    t_logits, _ = predict_test(teacher, data, cfg.data.workers)
    metrics = {
        "method": d.method_label(),
        "params": distiller.params if not d.terms else d.params,
        "arch": arch,
        "stages": [s.name for s in distiller.stages],
        "notes": notes,
        "teacher_cache": table is not None,
        # "computed" (the teacher ran over the training set) or "disk" (an earlier run's table)
        "teacher_cache_source": table.source if table else None,
        "teacher_cache_seconds": table.seconds if table else 0.0,
        # the teacher's inference (logit table, per-step forward): fp32, bf16 or fp16
        "teacher_precision": result.teacher_precision,
        "train_images": len(train),  # type: ignore[arg-type]
        "trained_images": result.images,
        "train_seconds": result.seconds,
        "images_per_s": result.images_per_s,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": top1(s_logits, labels),
        "agreement_with_teacher": agreement(s_logits, t_logits),
        "history": result.history,
    }
    write_json(stage_dir / "metrics.json", metrics)
    if distributed.current().main:
        fix = "it did not learn; try more --epochs, a lower --lr"
        warn_near_chance("student", arch, metrics["test_accuracy"], data.info.num_classes, fix)
    return student, metrics


@dataclass
class DistillResult:
    student: nn.Module
    metrics: dict


class DistillStage(Stage):
    """The student, distilled from the teacher by the configured method(s)."""

    name = "distill"

    def fingerprint(self, ctx: Context) -> str:
        return distill_fingerprint(ctx.cfg, ctx.fingerprints["teacher"])

    def outputs(self, ctx: Context) -> list[str]:
        return ["student.pt", "metrics.json", "log.jsonl"]

    def run(self, ctx: Context, folder: Path) -> DistillResult:
        teacher = ctx.results["teacher"].model
        student, metrics = run_distill_stage(
            ctx.cfg, ctx.data, teacher, folder, ctx.fingerprints[self.name]
        )
        return _shipped(ctx, DistillResult(student, metrics))

    def load(self, ctx: Context, folder: Path) -> DistillResult:
        metrics = read_json(folder / "metrics.json")
        student = models.create(metrics["arch"], ctx.num_classes, folder / "student.pt")
        return _shipped(ctx, DistillResult(student.eval(), metrics))

    def summary(self, result: DistillResult) -> dict:
        return result.metrics


def _shipped(ctx: Context, result: DistillResult) -> DistillResult:
    """DML ships its best peer, which may be of another architecture: the stages after this
    one see that student's arch (the run directory stays where it is)."""
    arch = result.metrics["arch"]
    if arch != ctx.cfg.student.arch:
        ui.info(f"distill: the exported student is the {arch} peer")
        student = ctx.cfg.student.model_copy(update={"arch": arch})
        ctx.cfg = ctx.cfg.model_copy(update={"student": student, "out": ctx.cfg.out_dir()})
    return result


STAGE = DistillStage()
