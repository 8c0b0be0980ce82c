"""The teacher stage: load the given weights as they are; or train from them (fine-tune: asked
by --fine-tune-teacher, or torchvision's ImageNet weights on data of other classes, with a fresh
classifier; at --fine-tune-lr); or train the teacher from scratch. Trained teachers are cached.

A trained teacher is stored in kdpipe's cache (`$KDPIPE_CACHE`, default ~/.cache/kdpipe)
under a fingerprint of everything that shaped it, so any later run with the same settings,
in any output directory, reuses it instead of training again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdpipe import models
from kdpipe.core import cache, torchrun, ui
from kdpipe.core.config import RunConfig, TeacherConfig, TrainConfig, model_label
from kdpipe.core.errors import ModelError
from kdpipe.core.runs import (
    file_sha256,
    fingerprint,
    read_json,
    save_torch,
    write_json,
)
from kdpipe.data import DataSplits, augment
from kdpipe.distill import data_parallel
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.methods import get as get_method
from kdpipe.distill.stepper import Runtime, training_numerics
from kdpipe.distill.trainer import fit, predict_test
from kdpipe.models.custom import sources
from kdpipe.parallel import distributed
from kdpipe.runtimes.accuracy import top1, warn_near_chance
from kdpipe.stages.base import Context, Stage


@dataclass
class TeacherResult:
    model: nn.Module
    metrics: dict


def teacher_fingerprint(cfg: RunConfig, num_classes: int) -> str:
    t = cfg.teacher
    recipe = {
        "train": t.train.model_dump(),
        "label_smoothing": t.label_smoothing,
        **training_numerics(cfg.runtime),  # nothing on a CPU: its cache keys stay as they were
    }
    source: dict[str, Any] = recipe
    if t.weights:
        source = {"weights_sha256": file_sha256(models.weights_file(t.arch, t.weights))}
        if needs_fine_tuning(cfg, num_classes):
            source["fine_tune"] = {**recipe, "train": fine_tuning(t).model_dump()}
    return fingerprint("teacher", t.arch, source, cfg.data.content(), cfg.seed, *sources(t.arch))


def fine_tuning(t: TeacherConfig) -> TrainConfig:
    """The recipe of a teacher trained from weights: the teacher's, at its fine-tuning lr."""
    return t.train.model_copy(update={"lr": t.fine_tune_lr})


def needs_fine_tuning(cfg: RunConfig, num_classes: int) -> bool:
    """Whether the teacher trains from --teacher-weights: asked (--fine-tune-teacher), or
    torchvision's weights scoring other classes than the data's. A file of the user's that
    scores other classes is refused instead: it is more often the wrong file than a wish."""
    t = cfg.teacher
    if t.weights is None:
        return False
    if t.fine_tune:
        return True
    path = models.weights_file(t.arch, t.weights)
    scored = models.classes_in(t.arch, path, num_classes)
    if scored == num_classes:
        return False
    if models.torchvision_tag(t.weights):
        return True
    raise ModelError(
        f"weights in {path} do not fit: they score {scored} classes, the data has {num_classes}",
        "pass the teacher trained for this data, or add --fine-tune-teacher to train them on "
        "it (a fresh classifier)",
    )


def cached_teacher_dir(cfg: RunConfig, fp: str) -> Path:
    """Where a teacher trained with fingerprint `fp` is kept for later runs."""
    return cache.entry("teachers", f"{model_label(cfg.teacher.arch)}-{fp}")


def save_state(model: nn.Module, path: Path) -> None:
    save_torch(model.state_dict(), path)


def run_teacher_stage(cfg: RunConfig, data: DataSplits, stage_dir: Path, fp: str) -> TeacherResult:
    """Produce stage_dir/model.pt and metrics.json; return the model in eval mode."""
    k = data.info.num_classes
    t = cfg.teacher
    cached = cached_teacher_dir(cfg, fp)
    main = distributed.current().main
    tune = needs_fine_tuning(cfg, k)
    if t.weights is not None and not tune:
        model = models.create(t.arch, k, t.weights)
        metrics: dict[str, Any] = {"source": "weights", "weights": str(t.weights)}
    elif distributed.from_rank_0(  # rank 0's cache decides for all (see below)
        (reused := _from_cache(t.arch, k, cached) if main else None) is not None
    ):
        # Other ranks take rank 0's weights: their machines' caches may lack the teacher
        # (rank 0 alone keeps what the job trains), or hold another training of it.
        model, metrics = reused if reused else (models.create(t.arch, k), {"source": "cache"})
        ui.info(f"teacher: reusing {t.arch} trained earlier with the same settings ({cached})")
    else:
        if t.weights is not None:
            torchrun.check_batch("teacher", t.train.batch_size)
            model, fresh = models.create_pretrained(t.arch, k, t.weights)
            head = f" (its classifier replaced by a fresh {k}-class one)" if fresh else ""
            label = models.weights_label(t.arch, t.weights)
            ui.info(
                f"teacher: fine-tuning {t.arch} from {label} on {data.info.name}{head}, "
                f"lr {t.fine_tune_lr:g}"
            )
        else:
            ui.info(
                f"teacher: no weights given, training {t.arch} from scratch on {data.info.name}"
            )
            model = models.create(t.arch, k)
        trainer = get_method("ce")(model, params={"label_smoothing": t.label_smoothing})
        result = fit(
            trainer,
            data.train,
            data.val,
            fine_tuning(t) if tune else t.train,
            cfg.seed,
            f"teacher {t.arch}",
            log_path=stage_dir / "log.jsonl",
            runtime=Runtime.from_config(cfg.runtime, cfg.data.workers, data.in_memory),
            checkpoint=Checkpointing(
                stage_dir / "checkpoints" / "last.pt", fp, cfg.runtime.checkpoint_every
            ),
            augment=augment.for_training(
                cfg.data.augment, data.info, data.train, cfg.seed, cfg.data.crop_scale
            ),
        )
        metrics = {
            "source": "fine-tuned" if tune else "trained",
            **({"weights": str(t.weights)} if tune else {}),
            "train_seconds": result.seconds,
            "images_per_s": result.images_per_s,
            "val_accuracy": result.val_accuracy,
            "history": result.history,
        }
        if main:  # the others' writes would be dropped (leaving an empty folder in their cache)
            _keep_in_cache(model, metrics, cached)
    data_parallel.broadcast_state(model.state_dict())  # one teacher for every rank: rank 0's
    logits, labels = predict_test(model, data, cfg.data.workers)
    metrics.update(arch=t.arch, test_accuracy=top1(logits, labels))
    if main:
        fix = "check --teacher-weights" if t.weights and not tune else "raise --teacher-epochs"
        warn_near_chance("teacher", t.arch, metrics["test_accuracy"], k, fix)
    save_state(model, stage_dir / "model.pt")
    write_json(stage_dir / "metrics.json", metrics)
    return TeacherResult(model.eval(), metrics)


def _keep_in_cache(model: nn.Module, metrics: dict[str, Any], cached: Path) -> None:
    """Keep the trained teacher for later runs, if the cache can take it: a cache that is not
    writable (a read-only home, KDPIPE_CACHE naming a file, a full disk) costs the reuse, not
    the run (ending it here would make every rerun train the teacher again, only to fail at
    the same place)."""

    def write() -> None:
        save_state(model, cached / "model.pt")
        write_json(cached / "metrics.json", metrics)

    cache.keep("teacher:", "train it again", write)


def _from_cache(arch: str, k: int, cached: Path) -> tuple[nn.Module, dict[str, Any]] | None:
    """The teacher trained earlier with these settings, or None: absent, or damaged since
    (a cache on a disk that filled up), which is said, and the teacher is trained again."""
    if not ((cached / "model.pt").is_file() and (cached / "metrics.json").is_file()):
        return None

    def read() -> tuple[nn.Module, dict[str, Any]]:
        model = models.create(arch, k, cached / "model.pt")
        metrics = read_json(cached / "metrics.json")
        return model, {**metrics, "source": "cache", "cache_path": str(cached)}

    where = f"the cached {arch} in {cached}"
    return cache.read_back("teacher", where, "training it again", read)


def load_teacher(cfg: RunConfig, num_classes: int, stage_dir: Path) -> TeacherResult:
    model = models.create(cfg.teacher.arch, num_classes, stage_dir / "model.pt")
    return TeacherResult(model.eval(), read_json(stage_dir / "metrics.json"))


class TeacherStage(Stage):
    """The teacher: loaded as given, fine-tuned, taken from the cache or trained."""

    name = "teacher"

    def fingerprint(self, ctx: Context) -> str:
        return teacher_fingerprint(ctx.cfg, ctx.num_classes)

    def outputs(self, ctx: Context) -> list[str]:
        return ["model.pt", "metrics.json"]

    def run(self, ctx: Context, folder: Path) -> TeacherResult:
        fp = ctx.fingerprints[self.name]
        if self.name in ctx.redo and ctx.main:  # forced: the cached copy is trained again too
            for f in cached_teacher_dir(ctx.cfg, fp).glob("*"):
                f.unlink()
        return run_teacher_stage(ctx.cfg, ctx.data, folder, fp)

    def load(self, ctx: Context, folder: Path) -> TeacherResult:
        return load_teacher(ctx.cfg, ctx.num_classes, folder)

    def summary(self, result: TeacherResult) -> dict:
        return result.metrics


STAGE = TeacherStage()
