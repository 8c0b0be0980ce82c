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
from torch.utils.data import DataLoader

from kdpipe import ui
from kdpipe.config import RunConfig
from kdpipe.data import DataSplits
from kdpipe.export.verify import ort_logits, ort_session
from kdpipe.profile import complexity, environment
from kdpipe.profile.accuracy import agreement, predict_logits, top1
from kdpipe.profile.backends import Target, ort_runner, torch_runner
from kdpipe.profile.latency import measure_interleaved, summarize
from kdpipe.runs import write_json

TEACHER = Target("teacher", "torch-cpu", "fp32")
STUDENT = Target("student", "torch-cpu", "fp32")
HIGH_CV = 0.25  # above this spread the machine was probably busy while timing


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
    onnx_targets = {Target("student", "ort-cpu", prec): path for prec, path in onnx_files.items()}
    models = _accuracy_and_size(data, teacher, student, files, onnx_targets, threads)

    latency: list[dict] = []
    sample = next(iter(DataLoader(data.test, batch_size=max(p.batch_sizes))))[0]
    with ui.progress() as bar:
        task = bar.add_task("profile", total=len(p.batch_sizes) * len(models), rate="", stats="")
        for i, bs in enumerate(p.batch_sizes):
            batch = _batch_of(sample, bs)
            calls: dict[Target, Callable[[], object]] = {
                TEACHER: torch_runner(teacher, batch),
                STUDENT: torch_runner(student, batch),
            }
            for target, path in onnx_targets.items():
                calls[target] = ort_runner(path, batch, threads)
            base, label = i * len(calls), f"batch {bs}"

            def advance(finished: int, _total: int, base: int = base, label: str = label) -> None:
                bar.update(task, completed=base + finished, stats=label)

            timings = measure_interleaved(
                calls, p.warmup, p.warmup_seconds, p.min_iters, p.min_seconds, on_round=advance
            )
            for target, ms in timings.items():
                latency.append(
                    {
                        "model": target.model,
                        "backend": target.backend,
                        "precision": target.precision,
                        "batch_size": bs,
                        **summarize(ms, bs),
                    }
                )
    for e in latency:
        if e["cv"] > HIGH_CV:
            ui.warn(
                f"{e['model']} {e['backend']} {e['precision']} batch {e['batch_size']}: latency "
                f"varies a lot (cv {e['cv']:.2f}); the machine may be busy"
            )
    results = {
        "models": models,
        "latency": latency,
        "settings": {
            **p.model_dump(),
            "threads": threads,
            "timer": "time.perf_counter_ns",
            "ort_spinning": False,
        },
        "environment": environment.describe(threads),
    }
    write_json(stage_dir / "results.json", results)
    return results


def _accuracy_and_size(
    data: DataSplits,
    teacher: nn.Module,
    student: nn.Module,
    files: dict[str, Path],
    onnx_targets: dict[Target, Path],
    threads: int,
) -> list[dict]:
    """One row per target: test top-1, agreement with the teacher, params, FLOPs, file size."""
    size = data.info.input_size
    net_facts = {
        "teacher": (complexity.parameters(teacher), complexity.flops_per_image(teacher, size)),
        "student": (complexity.parameters(student), complexity.flops_per_image(student, size)),
    }
    t_logits, labels = predict_logits(teacher, data.test)
    outputs: list[tuple[Target, Tensor, int]] = [
        (TEACHER, t_logits, files["teacher"].stat().st_size),
        (STUDENT, predict_logits(student, data.test)[0], files["student"].stat().st_size),
    ]
    for target, path in onnx_targets.items():
        logits = ort_logits(ort_session(path, threads), data.test)[0]
        outputs.append((target, logits, path.stat().st_size))
    rows = []
    for target, logits, nbytes in outputs:
        params, flops = net_facts[target.model]
        rows.append(
            {
                "model": target.model,
                "backend": target.backend,
                "precision": target.precision,
                "accuracy": top1(logits, labels),
                "agreement_with_teacher": agreement(logits, t_logits),
                "params": params,
                "flops": flops,
                "size_bytes": nbytes,
            }
        )
    return rows


def _batch_of(sample: Tensor, size: int) -> Tensor:
    """`size` real test images (repeated if the test set is smaller), contiguous float32."""
    reps = -(-size // len(sample))
    return sample.repeat(reps, 1, 1, 1)[:size].contiguous()
