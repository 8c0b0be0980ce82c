"""`run`: the pipeline from options to report, on one process or every rank of a torchrun job."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml

from kdpipe import models
from kdpipe.core import torchrun, ui
from kdpipe.core.config import RunConfig
from kdpipe.core.errors import ConfigError, KdpipeError, absent, reported
from kdpipe.core.runs import (
    RunDir,
    check_until,
    ensure_writable_dir,
    forced_stages,
    refuse_foreign_dir,
    set_writer,
    write_text,
)
from kdpipe.data import DataSplits, load_data, parse_spec
from kdpipe.data.transfer import check_transfer
from kdpipe.data.transforms import crop_fraction
from kdpipe.distill.compose import Composite
from kdpipe.distill.methods import get as get_method
from kdpipe.parallel import distributed
from kdpipe.parallel.runlock import RunLock
from kdpipe.profile.environment import check_input_fits
from kdpipe.stages.base import Context, run_pipeline
from kdpipe.stages.inputs import check_same_inputs
from kdpipe.stages.teacher import (
    needs_fine_tuning,
)


def batch_splits(cfg: RunConfig) -> list[tuple[str, int]]:
    """(role, global batch) of each training this run may do."""
    roles = [("student", cfg.distill.train.batch_size)]
    if cfg.teacher.weights is None:
        roles.insert(0, ("teacher", cfg.teacher.train.batch_size))
    return roles


def check_batches(cfg: RunConfig, world: int) -> None:
    """Checked before any work starts; a teacher fine-tuned from weights for other classes
    (known once the data is) is checked as its training starts."""
    for role, batch in batch_splits(cfg):
        torchrun.check_batch(role, batch, world)


def note_uneven_batches(cfg: RunConfig, world: int) -> None:
    by_batch: dict[int, list[str]] = {}
    for role, batch in batch_splits(cfg):
        by_batch.setdefault(batch, []).append(role)
    for batch, roles in by_batch.items():
        if world > 1 and batch % world:
            ui.info(
                f"note: the {' and '.join(roles)} batch size {batch} is not a multiple of "
                f"{world} processes: each takes {batch // world}, "
                f"{batch // world * world} images per step"
            )


def note_pretrained_evaluation(cfg: RunConfig) -> None:
    """torchvision's ImageNet weights, and ImageNet's published accuracies, were evaluated on
    centre crops (256 -> 224 for most): image files squashed whole instead (the default) meet
    them with other pixels."""
    kind, _ = parse_spec(cfg.data.spec)
    if cfg.data.center_crop is not None or kind == "digits":
        return
    for arch, weights in (
        (cfg.teacher.arch, cfg.teacher.weights),
        (cfg.student.arch, cfg.student.weights),
    ):
        crop = models.torchvision_crop(arch, weights) if weights is not None else None
        if crop is not None:
            resize, size = crop
            ui.info(
                f"note: torchvision's weights for {arch} were evaluated on {size}x{size} centre "
                f"crops of images resized to {resize}: --center-crop {crop_fraction(size, resize)} "
                f"--image-size {size} shows your images as they saw theirs"
            )
            return
    if kind == "imagenet":
        ui.info(
            "note: ImageNet accuracies are usually measured on 224x224 centre crops of images "
            "resized to 256 (--center-crop 0.875); this run resizes whole images instead"
        )


def validate(cfg: RunConfig, world: int | None = None) -> None:
    """Check names and files before any work starts, so bad input fails in a second (the
    launcher of `--nproc` runs it once, before any worker starts, with `world` = N)."""
    check_batches(cfg, world or torchrun.world_size())
    check_names_and_files(cfg)


def check_names_and_files(cfg: RunConfig) -> None:
    """Models, methods and their parameters, and the files the options name."""
    models.check_name(cfg.teacher.arch)
    models.check_name(cfg.student.arch)
    d = cfg.distill
    method = get_method(d.method)
    if d.terms:
        Composite.check({m: get_method(m) for m in d.terms}, d.params)
    else:
        method.checked_params(d.params)
    for arch in (*d.assistants, *d.peers):
        models.check_name(arch)
    if not d.terms and method.uses_assistants and not d.assistants:
        raise ConfigError(
            f"{d.method} needs at least one teacher assistant",
            "add --assistant ARCH (e.g. resnet34)",
        )
    check_transfer(d.transfer)
    if d.peers and (d.terms or not method.uses_peers):
        raise ConfigError("--peers is for deep mutual learning", "add --method dml")
    if cfg.teacher.fine_tune and cfg.teacher.weights is None:
        raise ConfigError(
            "--fine-tune-teacher needs --teacher-weights to start from",
            "add --teacher-weights FILE (or torchvision), or drop --fine-tune-teacher",
        )
    for label, arch, path in (
        ("--teacher-weights", cfg.teacher.arch, cfg.teacher.weights),
        ("--student-weights", cfg.student.arch, cfg.student.weights),
    ):
        if path is None:
            continue
        if models.torchvision_tag(path):
            models.weights_file(arch, path)  # in torchvision's cache, or one line saying where
        elif not Path(path).is_file():
            raise ConfigError(f"{label} file {path} {absent(path, folder=False)}", "check the path")


def check_models_take(cfg: RunConfig, num_classes: int, input_size: tuple[int, ...]) -> None:
    """Refuse, before the teacher trains, a model that cannot take the data's image size."""
    d = cfg.distill
    roles = [("teacher", cfg.teacher.arch), ("student", cfg.student.arch)]
    roles += [("teacher assistant", a) for a in d.assistants] + [("peer", p) for p in d.peers]
    for role, arch in dict.fromkeys(roles):
        models.check_input_size(role, arch, num_classes, input_size)
    needs_fine_tuning(cfg, num_classes)  # teacher weights for other classes: refused or tuned


def _prepare_out_dir(cfg: RunConfig, forced: bool, main: bool, lock: RunLock) -> Path:
    """Rank 0 alone checks and claims the output directory while the others wait: a rank
    that looked after rank 0 had begun writing would take the run for someone else's. Every
    rank then learns whether it worked, so none is left waiting at the next collective.
    Rank 0 takes the directory's lock before it writes anything (runlock.py). Every rank
    must see what rank 0 writes there: ranks on other machines with a directory of their own
    would resume from other checkpoints and wait forever in the next collective."""
    out = cfg.out_dir()
    error: ConfigError | None = None
    if main:
        try:
            refuse_foreign_dir(out, forced)
            ensure_writable_dir(out)
            lock.acquire()
            config = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
            write_text(out / "config.yaml", config)
        except ConfigError as e:
            error = e
    if not all(distributed.gather_objects(error is None)):
        raise error or ConfigError(
            f"rank 0 could not use the output directory {out}", "see rank 0's message"
        )
    blind = distributed.ranks_not_seeing(out)
    if blind:
        who = ", ".join(f"{r} on {host}" for r, host in blind[:4])
        ranks, verb = ("rank", "does") if len(blind) == 1 else ("ranks", "do")
        raise ConfigError(
            f"--out {out} is not one directory for every rank: {ranks} {who} {verb} not see "
            "the files rank 0 writes there",
            "on several machines put --out on a filesystem every node mounts at the same path",
        )
    return out


def run(cfg: RunConfig, force: Iterable[str] = (), until: str = "report") -> dict:
    """Run the pipeline up to and including stage `until`; return the report (also written as
    report.json / report.md), or that stage's results when `until` names an earlier stage."""
    check_until(until)
    redo = forced_stages(force)
    check_batches(cfg, torchrun.world_size())  # from the options alone: every rank, before it joins
    # Under torchrun every rank runs this function; they train together, rank 0 writes.
    cuda = torch.cuda.is_available() and cfg.runtime.device != "cpu"
    rank = distributed.setup(torch.device("cuda" if cuda else "cpu"))
    if not rank.main:
        ui.silence_rank()
        set_writer(False)
    failure: KdpipeError | None = None
    try:
        data, times = _checked_inputs(cfg, until, rank.world)
    except KdpipeError as e:  # perhaps on this machine alone (a file missing here)
        failure = e
    except Exception as e:  # a file unreadable here, a bug: the others must not wait for it
        if rank.world == 1:
            raise
        failure = reported(e)
        failure.__cause__ = e  # --debug's traceback goes back to it
    distributed.raise_first_failure(failure)  # every rank stops with the first rank's error
    check_same_inputs(cfg, data)  # under torchrun: every process's, before any is written
    if not rank.main:
        ui.silence_rank(compared=True)  # inputs alike: rank 0's warnings speak for every rank
    lock = RunLock(cfg.out_dir())
    try:
        out = _prepare_out_dir(cfg, bool(redo), rank.main, lock)
        ctx = Context(cfg, data, RunDir(out), redo, rank.main, times=times)
        return run_pipeline(ctx, until)
    finally:
        lock.release()


def _checked_inputs(cfg: RunConfig, until: str, world: int) -> tuple[DataSplits, dict[str, dict]]:
    """Options and files checked, data loaded, models checked against it (shapes, memory):
    all before the output directory is touched. Returns the data and the stage times so far."""
    check_names_and_files(cfg)
    note_uneven_batches(cfg, world)
    note_pretrained_evaluation(cfg)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    data = load_data(cfg.data, cfg.seed)
    sizes = "/".join(str(data.info.sizes[s]) for s in ("train", "val", "test"))
    ui.info(
        f"data: {data.info.name}, {data.info.num_classes} classes, input {data.info.input_size}, "
        f"train/val/test {sizes}"
    )
    times = {"data": {"seconds": time.perf_counter() - start, "reused": False}}
    check_models_take(cfg, data.info.num_classes, data.info.input_size)
    if until in ("profile", "report"):
        check_input_fits(max(cfg.profile.run_batch_sizes()), list(data.info.input_size))
    return data, times


def export_weights(arch: str, weights: Path, cfg: RunConfig, out: Path) -> dict:
    """Export a trained model given as architecture + state_dict file (no run directory):
    ONNX files, parity on the test split of `cfg.data`, and the bundle, written to `out`."""
    models.check_name(arch)
    ensure_writable_dir(out)
    data = load_data(cfg.data, cfg.seed)
    models.check_input_size("model", arch, data.info.num_classes, data.info.input_size)
    student = models.create(arch, data.info.num_classes, weights).eval()
    from kdpipe.stages.export import run_export_stage  # onnx: only when exporting

    exported = run_export_stage(cfg.model_copy(update={"out": out.parent}), data, student, out)
    return exported.as_json()
