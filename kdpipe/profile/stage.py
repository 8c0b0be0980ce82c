"""The profile stage: teacher and student side by side on every available backend.

For each batch size, all targets (teacher torch, student torch, student ONNX FP32/INT8) are
timed interleaved on the same input batch; accuracy, agreement with the teacher, parameters,
FLOPs and file sizes come alongside.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from kdpipe import ui
from kdpipe.config import RunConfig
from kdpipe.data import DataSplits
from kdpipe.export.verify import ort_logits, ort_session
from kdpipe.profile import complexity, environment
from kdpipe.profile.accuracy import agreement, predict_logits, top1
from kdpipe.profile.backends import Target, ort_runner, torch_runner
from kdpipe.profile.latency import measure_interleaved, summarize
from kdpipe.runs import write_json


def run_profile_stage(
    cfg: RunConfig,
    data: DataSplits,
    teacher: nn.Module,
    student: nn.Module,
    files: dict[str, Path],
    onnx_files: dict[str, Path],
    stage_dir: Path,
) -> dict:
    """Measure every target; write results.json; return it."""
    p = cfg.profile
    threads = p.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    teacher.eval()
    student.eval()
    models: list[dict] = []
    test_logits: dict[Target, Tensor] = {}

    def add_model(target: Target, logits: Tensor, labels: Tensor, net: nn.Module, size: int) -> None:
        test_logits[target] = logits
        models.append({
            "model": target.model, "backend": target.backend, "precision": target.precision,
            "accuracy": top1(logits, labels),
            "agreement_with_teacher": agreement(logits, test_logits[TEACHER]),
            "params": complexity.parameters(net),
            "flops": complexity.flops_per_image(net, data.info.input_size),
            "size_bytes": size,
        })

    TEACHER = Target("teacher", "torch-cpu", "fp32")
    t_logits, labels = predict_logits(teacher, data.test)
    test_logits[TEACHER] = t_logits
    add_model(TEACHER, t_logits, labels, teacher, files["teacher"].stat().st_size)
    s_logits, _ = predict_logits(student, data.test)
    add_model(Target("student", "torch-cpu", "fp32"), s_logits, labels, student, files["student"].stat().st_size)
    for precision, path in onnx_files.items():
        logits, _ = ort_logits(ort_session(path, threads), data.test)
        add_model(Target("student", "ort-cpu", precision), logits, labels, student, path.stat().st_size)

    latency: list[dict] = []
    sample = next(iter(torch.utils.data.DataLoader(data.test, batch_size=max(p.batch_sizes))))[0]
    with ui.progress() as bar:
        task = bar.add_task("profile", total=len(p.batch_sizes) * len(models), rate="", stats="")
        done = 0
        for bs in p.batch_sizes:
            batch = _batch_of(sample, bs)
            calls: dict[Target, Callable[[], object]] = {
                TEACHER: torch_runner(teacher, batch),
                Target("student", "torch-cpu", "fp32"): torch_runner(student, batch),
            }
            for precision, path in onnx_files.items():
                calls[Target("student", "ort-cpu", precision)] = ort_runner(path, batch, threads)

            def advance(finished: int, total: int, base: int = done) -> None:
                bar.update(task, completed=base + finished, stats=f"batch {bs}")

            timings = measure_interleaved(
                calls, p.warmup, p.warmup_seconds, p.min_iters, p.min_seconds, on_round=advance
            )
            done += len(calls)
            for target, ms in timings.items():
                latency.append({
                    "model": target.model, "backend": target.backend,
                    "precision": target.precision, "batch_size": bs, **summarize(ms, bs),
                })
    results = {
        "models": models,
        "latency": latency,
        "settings": {**p.model_dump(), "threads": threads, "timer": "time.perf_counter_ns"},
        "environment": environment.describe(threads),
    }
    for entry in latency:
        if entry["cv"] > 0.25:
            ui.warn(
                f"{entry['model']} {entry['backend']} {entry['precision']} batch {entry['batch_size']}: "
                f"latency varies a lot (cv {entry['cv']:.2f}); the machine may be busy"
            )
    write_json(stage_dir / "results.json", results)
    return results


def _batch_of(sample: Tensor, size: int) -> Tensor:
    """`size` real test images (repeated if the test set is smaller), contiguous float32."""
    reps = -(-size // len(sample))
    return sample.repeat(reps, 1, 1, 1)[:size].contiguous()
