"""The Stage contract and the loop that runs stages in order.

A stage declares its `name`, the fingerprint of everything it reads (config sections and the
fingerprints of the stages before it), the files it leaves in its folder of the run directory,
`run` (compute them) and `load` (read them back). `run_pipeline` reuses a stage whose last
`stage.json` holds the same fingerprint and whose outputs are still as written, runs it
otherwise, and hands each result to the stages after it through a `Context`.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.core import ui
from kdpipe.core.config import RunConfig
from kdpipe.core.errors import KdpipeError, Stopped, first_line
from kdpipe.core.runs import STAGES, RunDir
from kdpipe.data import DataSplits
from kdpipe.parallel import distributed, stopping


@dataclass
class Context:
    """What a stage may read: the run's config (a stage may narrow it for those after it, as
    DML does when a peer becomes the student), the data, the run directory, and the results
    and fingerprints of the stages before it."""

    cfg: RunConfig
    data: DataSplits
    run_dir: RunDir
    redo: set[str]
    main: bool = True
    results: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    times: dict[str, dict] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.data.info.num_classes

    def folder(self, stage: str) -> Path:
        return self.run_dir.stage_dir(stage)


# Stages that train run on every rank of a torchrun job; those after them on rank 0 alone.
TRAINING = ("teacher", "distill")


class Stage(ABC):
    """One step of the pipeline."""

    name: str

    @abstractmethod
    def fingerprint(self, ctx: Context) -> str | None:
        """A hash of every input; None: nothing to reuse, the stage always runs."""

    @abstractmethod
    def outputs(self, ctx: Context) -> list[str]:
        """The files `run` leaves in the stage's folder (checked before a reuse)."""

    @abstractmethod
    def run(self, ctx: Context, folder: Path) -> Any:
        """Compute the stage's result and write its outputs into `folder`."""

    @abstractmethod
    def load(self, ctx: Context, folder: Path) -> Any:
        """The result of an earlier `run`, read back from `folder`."""

    def summary(self, result: Any) -> dict:
        """What `api.run` returns when the pipeline stops after this stage."""
        return result


def stage_named(name: str) -> Stage:
    """The stage called `name`, imported when first needed: export, profile and report pull
    in onnx and matplotlib, a second of start-up that a run stopping after training (and every
    torchrun rank) would otherwise pay."""
    module = importlib.import_module(f"kdpipe.stages.{name}")
    stage: Stage = module.STAGE
    return stage


def run_pipeline(ctx: Context, until: str) -> dict:
    """Run or reuse every stage up to and including `until`; the last one's summary."""
    for name in STAGES:
        stage = stage_named(name)
        result = run_or_reuse(stage, ctx)
        ctx.results[name] = result
        if name == until:
            return stage.summary(result)
        if name == TRAINING[-1]:
            distributed.shutdown()  # training is over: leave the process group
            if not ctx.main:
                return stage.summary(result)
    raise AssertionError(f"no stage named {until}")


def run_or_reuse(stage: Stage, ctx: Context) -> Any:
    """The stage's result: loaded when its fingerprint and outputs are as the last run left
    them (and it was not forced), computed otherwise."""
    distributed.barrier()  # every rank decides reuse from the same files
    stop = stopping.requested()  # a signal as the last stage's training ended
    if stop:
        raise Stopped(stop, f"before the {stage.name} stage")
    start = time.perf_counter()
    fp = stage.fingerprint(ctx)
    if fp is not None:
        ctx.fingerprints[stage.name] = fp
    folder = ctx.folder(stage.name)
    if fp is not None and stage.name not in ctx.redo and ctx.run_dir.is_done(stage.name, fp):
        result = _reused(stage, ctx, folder)
        if result is not None:
            ctx.times[stage.name] = {"seconds": time.perf_counter() - start, "reused": True}
            return result
    result = stage.run(ctx, folder)
    seconds = time.perf_counter() - start
    if fp is not None:
        ctx.run_dir.mark_done(stage.name, fp, stage.outputs(ctx), seconds)
    ctx.times[stage.name] = {"seconds": seconds, "reused": False}
    return result


def _reused(stage: Stage, ctx: Context, folder: Path) -> Any | None:
    try:
        result = stage.load(ctx, folder)
    except (KdpipeError, OSError, ValueError, KeyError) as e:  # damaged since written
        ui.warn(
            f"{stage.name}: its outputs in {folder} cannot be read ({first_line(e)}); "
            "running the stage again"
        )
        return None
    ui.info(f"{stage.name}: up to date, reusing {folder}")
    return result
