"""The profile stage: teacher and student side by side on every available backend.

For each batch size, all runners (teacher and student in torch, both models' ONNX files in
onnxruntime, TensorRT engines, on CPU and GPU where present) are timed interleaved on the
same input batch; accuracy, agreement with the teacher, parameters, FLOPs and file sizes
come alongside. Backends that cannot run here are listed with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdpipe.core import ui
from kdpipe.core.config import ProfileConfig, RunConfig
from kdpipe.core.runs import fingerprint, read_json, write_json
from kdpipe.data import DataSplits
from kdpipe.export.bundle import FILE_OF_FORM
from kdpipe.profile import complexity, environment, memory
from kdpipe.profile.latency import (
    REWARM_CALLS,
    ROUND_CALLS,
    measure_alone,
    measure_interleaved,
    summarize,
)
from kdpipe.profile.layers import onnxruntime_layers, openvino_layers
from kdpipe.report.model import ProfileResult
from kdpipe.runtimes.accuracy import agreement, call_logits, top1
from kdpipe.runtimes.backends import Runner, Target
from kdpipe.runtimes.registry import Model, runners_of
from kdpipe.stages.base import Context, Stage
from kdpipe.stages.export import FILES, TEACHER_ONNX

LAYER_VIEWS = {"ort-cpu": onnxruntime_layers, "ov-cpu": openvino_layers}
HIGH_CV = 0.25  # above this spread the machine was probably busy while timing


def run_profile_stage(
    cfg: RunConfig,
    data: DataSplits,
    teacher: nn.Module,
    student: nn.Module,
    files: dict[str, Path],
    onnx_files: dict[str, Path],
    plans: dict[str, Path],
    stage_dir: Path,
    teacher_onnx: Path | None = None,
) -> dict:
    """Measure every target; write results.json; return it. With `teacher_onnx` the teacher
    is timed on onnxruntime too, beside the student."""
    p = cfg.profile.model_copy(update={"batch_sizes": cfg.profile.run_batch_sizes()})
    threads = p.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    teacher.eval()
    student.eval()
    k = data.info.num_classes
    teacher_forms = {"fp32": teacher_onnx} if teacher_onnx is not None else {}
    both = [
        Model("teacher", teacher, cfg.teacher.arch, k, files["teacher"], teacher_forms),
        Model(
            "student",
            student,
            cfg.student.arch,
            k,
            files["student"],
            dict(onnx_files),
            plans=dict(plans),
        ),
    ]
    runners, skipped = runners_of(both, threads)
    for s in skipped:
        ui.info(f"profile: {s['backend']} skipped: {s['reason']}")
    models = _accuracy_and_size(data, teacher, student, runners)
    if p.memory:
        shape = [max(p.batch_sizes), *data.info.input_size]
        rows = [(row, r) for row, r in zip(models, runners, strict=True) if r.memory_spec]
        measured = memory.measure_all([{**r.memory_spec, "shape": shape} for _, r in rows])
        for (row, _), mem in zip(rows, measured, strict=True):
            row["memory"] = {"batch_size": shape[0], **mem}

    sample = next(iter(DataLoader(data.test, batch_size=max(p.batch_sizes))))[0]
    latency, samples = time_runners(
        runners, sample, p, alone=lambda: runners_of(both, threads, alone=True)[0]
    )
    results = {
        "models": models,
        "latency": latency,
        "layers": student_layers(runners, onnx_files, _batch_of(sample, p.ship_batch), threads),
        "skipped_backends": skipped,
        "settings": settings_record(p, threads),
        "environment": environment.describe(threads),
    }
    write_json(stage_dir / "results.json", results)
    write_json(stage_dir / "samples.json", samples)
    return results


def student_layers(
    runners: list[Runner], files: dict[str, Path], x: Tensor, threads: int
) -> dict[str, list[dict]]:
    """One call of each CPU form of the student, by operator (profile/layers.py), at the
    batch size it ships at: why a form is as fast as it is."""
    out = {}
    for r in runners:
        t = r.target
        if t.model == "student" and t.backend in LAYER_VIEWS:
            path = files[FILE_OF_FORM[t.precision]]
            out[f"{t.backend}.{t.precision}"] = LAYER_VIEWS[t.backend](path, x.numpy(), threads)
    return out


def settings_record(p: ProfileConfig, threads: int) -> dict:
    """How the timings were taken, for report.json's `profile_settings`."""
    return {
        **p.model_dump(),
        "threads": threads,
        "timer": "time.perf_counter_ns, end to end (GPU runners synchronize)",
        # p50_ms, p95_ms, ...: each model alone in a plain loop, as an application sees it
        # (onnxruntime's workers spinning between calls); `interleaved`: all models in
        # rounds, their workers stopping when a call returns, for ratios between them
        "passes": ["interleaved", "alone"],
        "ort_spinning": {"alone": "within and between calls", "interleaved": "within a call"},
        # per model and round: untimed calls back to steady state, then the timed ones
        "round": {"rewarm_calls": REWARM_CALLS, "timed_calls": ROUND_CALLS},
    }


Timings = dict[tuple[Target, int], tuple[list[float], list[float] | None]]
INTERLEAVED_STATS = ("p50_ms", "p95_ms", "mean_ms")


def time_runners(
    runners: list[Runner],
    sample: Tensor,
    p: ProfileConfig,
    alone: Callable[[], list[Runner]] | None = None,
) -> tuple[list[dict], dict[str, list[float]]]:
    """Time every runner at each batch size (inputs cut from `sample`): interleaved, for the
    ratios between them, then each alone (`alone()` builds its runners for that: onnxruntime
    sessions whose threads spin, as an application's do), for absolute figures. The latency
    entries of report.json (alone, with the interleaved p50/p95/mean beside) and the raw
    per-call milliseconds behind them (KEY for alone, KEY.interleaved)."""
    with ui.progress(auto_refresh=False) as bar:
        task = bar.add_task(
            "profile", total=2 * len(p.batch_sizes) * len(runners), rate="", stats=""
        )
        mixed = _pass(runners, sample, p, measure_interleaved, (bar, task, 0), "interleaved")
        solo_runners = alone() if alone is not None else runners
        done = len(p.batch_sizes) * len(runners)
        solo = _pass(solo_runners, sample, p, measure_alone, (bar, task, done), "alone")
    latency: list[dict] = []
    samples: dict[str, list[float]] = {}
    for (target, bs), (ms, device_ms) in solo.items():
        key = f"{target.model}.{target.backend}.{target.precision}.bs{bs}"
        together = mixed[(target, bs)][0]
        samples[key] = [round(v, 5) for v in ms]
        samples[f"{key}.interleaved"] = [round(v, 5) for v in together]
        entry = {"model": target.model, "backend": target.backend, "precision": target.precision}
        latency.append({**entry, "batch_size": bs, **summarize(ms, bs)})
        latency[-1]["interleaved"] = {k: summarize(together, bs)[k] for k in INTERLEAVED_STATS}
        if device_ms:  # GPU: device time of the same timed calls, beside end-to-end time
            device = summarize(device_ms[-len(ms) :], bs)
            latency[-1]["device"] = {
                k: device[k] for k in ("p50_ms", "p95_ms", "p99_ms", "mean_ms")
            }
    for e in latency:
        if e["cv"] > HIGH_CV:
            ui.warn(
                f"{e['model']} {e['backend']} {e['precision']} batch {e['batch_size']}: latency "
                f"varies a lot (cv {e['cv']:.2f}); the machine may be busy"
            )
    return latency, samples


def _pass(
    runners: list[Runner],
    sample: Tensor,
    p: ProfileConfig,
    measure: Callable[..., dict],
    progress: tuple,
    label: str,
) -> Timings:
    """One timing pass over every batch size: per (target, batch) the call times and, on a
    GPU, the device times of the same calls."""
    bar, task, base = progress
    drawn = [0.0]  # when the bar was last drawn: between rounds, at most every 0.2 s
    out: Timings = {}
    for i, bs in enumerate(p.batch_sizes):
        batch = _batch_of(sample, bs)
        calls = {r.target: r.timed_call(batch) for r in runners}
        for r in runners:  # device clocks hold only this batch size's calls
            if r.device_ms is not None:
                r.device_ms.clear()
        start, stats = base + i * len(calls), f"{label}, batch {bs}"

        def advance(finished: int, total: int, start: int = start, stats: str = stats) -> None:
            now = time.perf_counter()
            draw = finished == total or now - drawn[0] > 0.2
            bar.update(task, completed=start + finished, stats=stats, refresh=draw)
            if draw:
                drawn[0] = now

        timings = measure(
            calls, p.warmup, p.warmup_seconds, p.min_iters, p.min_seconds, on_round=advance
        )
        for r in runners:
            out[(r.target, bs)] = (timings[r.target], list(r.device_ms or []) or None)
    return out


def _accuracy_and_size(
    data: DataSplits, teacher: nn.Module, student: nn.Module, runners: list[Runner]
) -> list[dict]:
    """One row per target: test top-1, agreement with the teacher, params, FLOPs, file size."""
    size = data.info.input_size
    net_facts = {
        "teacher": (complexity.parameters(teacher), complexity.flops_per_image(teacher, size)),
        "student": (complexity.parameters(student), complexity.flops_per_image(student, size)),
    }
    outputs = [(r, *call_logits(r.predict, data.test)) for r in runners]
    t_logits = outputs[0][1]  # the first runner is the teacher in torch-cpu
    rows = []
    for runner, logits, labels in outputs:
        params, flops = net_facts[runner.target.model]
        rows.append(
            {
                "model": runner.target.model,
                "backend": runner.target.backend,
                "precision": runner.target.precision,
                "accuracy": top1(logits, labels),
                "agreement_with_teacher": agreement(logits, t_logits),
                "params": params,
                "flops": flops,
                "size_bytes": runner.size_bytes,
            }
        )
    return rows


def _batch_of(sample: Tensor, size: int) -> Tensor:
    """`size` real test images (repeated if the test set is smaller), contiguous float32."""
    reps = -(-size // len(sample))
    return sample.repeat(reps, *[1] * (sample.dim() - 1))[:size].contiguous()


class ProfileStage(Stage):
    """Teacher and student timed side by side on every backend that runs here, with their
    accuracy, size, FLOPs and memory."""

    name = "profile"

    def fingerprint(self, ctx: Context) -> str:
        fps = ctx.fingerprints
        return fingerprint("profile", fps["export"], fps["teacher"], ctx.cfg.profile.model_dump())

    def outputs(self, ctx: Context) -> list[str]:
        return ["results.json", "samples.json"]

    def run(self, ctx: Context, folder: Path) -> ProfileResult:
        cfg, exported = ctx.cfg, ctx.folder("export")
        files = {
            "teacher": ctx.folder("teacher") / "model.pt",
            "student": ctx.folder("distill") / "student.pt",
        }
        onnx_files: dict[str, Path] = {p: exported / FILES[p] for p in cfg.export.precisions}
        teacher_onnx = exported / TEACHER_ONNX if cfg.export.teacher else None
        engines = read_json(exported / "tensorrt.json")
        plans = {
            p: exported / m["plan"]
            for p, m in engines.items()
            if isinstance(m, dict) and "plan" in m
        }
        teacher, student = ctx.results["teacher"].model, ctx.results["distill"].student
        results = run_profile_stage(
            cfg, ctx.data, teacher, student, files, onnx_files, plans, folder, teacher_onnx
        )
        return ProfileResult.model_validate(results)

    def load(self, ctx: Context, folder: Path) -> ProfileResult:
        return ProfileResult.model_validate(read_json(folder / "results.json"))

    def summary(self, result: ProfileResult) -> dict:
        return result.as_json()


STAGE = ProfileStage()
