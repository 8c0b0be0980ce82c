"""Distillation throughput: kdpipe's distill stage against the naive loop that runs the
teacher every step, resnet50 -> resnet18 on digits, same recipe, same epochs.

    python bench/distill_throughput.py [--epochs 8] [--out DIR] [--device cuda]

kdpipe: `api.run(until="distill")` with the teacher already trained, timed end to end (data,
teacher load, the teacher-logit table, training, test evaluation), and its training work alone
(the teacher-logit table + fit(), from metrics.json). kdpipe runs twice per round: "cold", with
the teacher-logit table removed from $KDPIPE_CACHE first (a first run: the teacher runs over the
training set), and "warm", reading the table the cold run stored (any later run of the same
teacher over the same images: another student, another method, a resumed run). The loops
alternate `--repeats` times (odd rounds start with the naive loop), and each round's ratio is
taken between its own back-to-back runs. Naive: a plain PyTorch loop
(contiguous tensors, teacher forward under no_grad every step, the same KD loss, AdamW
one-cycle, batch 128). Reports images/s of each, the ratio, and both students' test top-1
(the ratio only counts if they agree within 0.5 pt), and this machine's ceiling for the ratio
(see `ceiling`). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from kdpipe import api, models
from kdpipe.core import ui
from kdpipe.core.cache import root as cache_root
from kdpipe.core.config import RunConfig
from kdpipe.data import load_data
from kdpipe.distill.methods.kd import kd_loss
from kdpipe.runtimes.accuracy import predict_logits, top1


def naive_loop(cfg: RunConfig, teacher_path: Path, device: str) -> tuple[float, float]:
    """(images/s, test top-1) of the straightforward loop (full precision, on `device`)."""
    data = load_data(cfg.data, cfg.seed)
    k = data.info.num_classes
    teacher = models.create(cfg.teacher.arch, k, teacher_path).eval().to(device)
    torch.manual_seed(cfg.seed)
    student = models.create(cfg.student.arch, k).to(device)
    t = cfg.distill.train
    loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(student.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, t.lr, total_steps=t.epochs * len(loader))
    T, alpha = 4.0, 0.9
    seen, start = 0, time.perf_counter()
    for _ in range(t.epochs):
        student.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                z_t = teacher(x)
            z_s = student(x)
            loss = alpha * kd_loss(z_s, z_t, T) + (1 - alpha) * F.cross_entropy(z_s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
    if device == "cuda":
        torch.cuda.synchronize()
    rate = seen / (time.perf_counter() - start)
    logits, labels = predict_logits(student.cpu(), data.test)
    return rate, top1(logits, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two loops")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="kdpipe-throughput-"))
    os.environ.setdefault("KDPIPE_CACHE", str(work / "cache"))
    ui.set_quiet(True)
    cfg = RunConfig.model_validate(
        {
            "out": str(work / "run"),
            "distill": {"train": {"epochs": args.epochs}},
            "runtime": {"device": args.device},
        }
    )
    api.run(cfg, until="teacher")
    teacher = cfg.out_dir() / "teacher" / "model.pt"
    # kdpipe and naive alternate, so a slow spell of the machine hits both; medians reported.
    tables = cache_root() / "teacher-logits"  # $KDPIPE_CACHE when set, not always work/cache
    rates: dict[str, list[float]] = {k: [] for k in ("cold", "cold e2e", "warm", "warm e2e")}
    naive, accs, same = [], [], []
    for round_ in range(args.repeats):
        top1s = {}
        if round_ % 2 == 1:  # odd rounds time the naive loop first: drift within a round cancels
            rate, n_acc = naive_loop(cfg, teacher, args.device)
            naive.append(rate)
        for temp in ("cold", "warm"):
            if temp == "cold":
                shutil.rmtree(tables, ignore_errors=True)
            start = time.perf_counter()
            m = api.run(cfg, until="distill", force=["distill"])
            wall = time.perf_counter() - start
            assert m["teacher_cache_source"] == ("computed" if temp == "cold" else "disk")
            # Images actually trained on: both loops drop each epoch's incomplete last batch.
            images = m["trained_images"]
            rates[f"{temp} e2e"].append(images / wall)
            # The stage's training work: the teacher-logit table (computed or read), then
            # fit() with its per-epoch validation and checkpoints (no data loading, no
            # final test evaluation).
            rates[temp].append(images / (m["train_seconds"] + m["teacher_cache_seconds"]))
            top1s[temp] = m["test_accuracy"]
        same.append(top1s["cold"] == top1s["warm"])
        if round_ % 2 == 0:
            rate, n_acc = naive_loop(cfg, teacher, args.device)
            naive.append(rate)
        accs.append((m["test_accuracy"], n_acc))
    med = statistics.median
    k_acc, n_acc = accs[-1]
    every = ", ".join(f"kdpipe {k} {fmt(v)}" for k, v in rates.items())
    print(f"images/s over {args.repeats} alternations (medians; all: {every}, naive {fmt(naive)})")
    # Each round's kdpipe and naive runs are back to back, so the machine's drift between
    # rounds leaves a round's ratio alone; the x-naive column is the median of those ratios.
    print("| loop | images/s | x naive (median of rounds; each) | student test top-1 |")
    print("|---|---|---|---|")
    print(f"| naive (teacher every step) | {med(naive):.1f} | 1.00 | {100 * n_acc:.2f} % |")
    rows = (
        ("cold", "kdpipe, first run: logit table computed + fit()", f"{100 * k_acc:.2f} %"),
        ("warm", "kdpipe, table stored by an earlier run: read + fit()", "same"),
        ("cold e2e", "kdpipe distill stage end to end, first run", ""),
        ("warm e2e", "kdpipe distill stage end to end, table stored", ""),
    )
    for key, label, acc_text in rows:
        ratios = [k / n for k, n in zip(rates[key], naive, strict=True)]
        each = "/".join(f"{r:.2f}" for r in ratios)
        print(f"| {label} | {med(rates[key]):.1f} | {med(ratios):.2f} ({each}) | {acc_text} |")
    print(f"accuracy difference {100 * (k_acc - n_acc):+.2f} pt; cold and warm students' "
          f"test top-1 equal in {sum(same)} of {len(same)} rounds")  # fmt: skip
    t, s, most = ceiling(cfg, teacher, args.device)
    print(f"this machine: teacher forward {t:.0f} ms, student step {s:.0f} ms per batch of "
          f"{cfg.distill.train.batch_size}: no loop that skips the teacher passes "
          f"(T + S) / S = {most:.2f}x")  # fmt: skip


def ceiling(cfg: RunConfig, teacher_path: Path, device: str) -> tuple[float, float, float]:
    """(T, S, (T + S) / S): the naive loop's teacher forward (fp32, contiguous) and kdpipe's
    student training step (channels-last, fused AdamW, KD loss), ms per batch (medians of 6),
    and the ratio a loop that never runs the teacher could reach at most, data, validation
    and checkpoints aside: what this machine allows, whatever the loop."""
    data = load_data(cfg.data, cfg.seed)
    k, b = data.info.num_classes, cfg.distill.train.batch_size
    x = torch.stack([data.train[i][0] for i in range(b)]).to(device)
    y = torch.randint(0, k, (b,), device=device)
    teacher = models.create(cfg.teacher.arch, k, teacher_path).eval().to(device)
    student = models.create(cfg.student.arch, k).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, fused=True)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        z_t = teacher(x)

    def forward() -> None:
        with torch.no_grad():
            teacher(x)

    def step() -> None:
        z_s = student(xc)
        loss = 0.9 * kd_loss(z_s, z_t, 4.0) + 0.1 * F.cross_entropy(z_s, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def median_ms(f) -> float:  # type: ignore[no-untyped-def]
        f()
        times = []
        for _ in range(6):
            start = time.perf_counter()
            f()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    t, s = median_ms(forward), median_ms(step)
    return t, s, (t + s) / s


def fmt(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values)


if __name__ == "__main__":
    main()
