"""Is the gate stable on a noisy machine? (a benchmark, not a test)

    python bench/gate_stability.py --run runs/resnet50-to-resnet18-digits [--rounds 10] [--threads N]

1. Measures the run `--reference` times (`kdpipe profile RUN`), `--reference-gap` seconds
   apart, takes the median of the student's p95 at batch 1 on its fastest backend, and writes
   two budgets: 20 % above it and 20 % below it. Spread out so that one slow spell cannot
   set the reference alone (three back-to-back profiles have all fallen in one);
   where the machine's speed drifts by more than 20 % over the bench's 20 minutes, no
   reference taken beforehand can keep both budgets on their sides.
2. Gates the run `--rounds` times against each budget with `kdpipe gate --measure` (the gate
   re-profiles the run itself; a timing budget that is not a clear pass is measured up to
   `--confirm` more times and the majority decides). A stable gate passes the loose budget
   every time and fails the tight one every time.
3. Compares kdpipe's p50 for the student's ONNX FP32 file with a plain, independent timing
   loop (onnxruntime defaults, time.perf_counter) over the same file and input, and the plain
   loop with itself (a null control: the noise floor of the comparison).
Prints the figures for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def kdpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdpipe", *args], capture_output=True, text=True)


def reprofile(run: Path, threads: int | None) -> dict:
    extra = ["--threads", str(threads)] if threads else []
    proc = kdpipe("profile", str(run), "--batch-sizes", "1", "--no-memory", "--quiet", *extra)
    if proc.returncode != 0:
        sys.exit(f"profile failed: {proc.stderr[-500:]}")
    return json.loads((run / "report.json").read_text())


def plain_loop_p50(onnx_path: Path, shape: list[int], threads: int, calls: int = 600) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x = {"input": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    for _ in range(50):
        session.run(None, x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished kdpipe run directory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--reference", type=int, default=5, help="profiles behind the budgets")
    parser.add_argument("--reference-gap", type=float, default=30.0, help="seconds between them")
    parser.add_argument("--threads", type=int, default=None, help="profile threads (default: all)")
    parser.add_argument("--confirm", type=int, default=2, help="kdpipe gate --confirm")
    parser.add_argument("--alternations", type=int, default=25, help="for the p50 fidelity check")
    parser.add_argument("--fidelity-only", action="store_true", help="skip the gate rounds")
    args = parser.parse_args()
    if args.fidelity_only:
        fidelity(args.run, reprofile(args.run, args.threads), args.alternations)
        return
    refs = []
    for i in range(args.reference):
        if i:
            time.sleep(args.reference_gap)
        refs.append(reprofile(args.run, args.threads))
    report = refs[-1]
    basis = report["summary"]["speedup_basis"]["student"]
    key = f"student.{basis['backend']}.{basis['precision']}.bs1.p95_ms"
    p95 = float(np.median([r["metrics"][key] for r in refs]))
    print(f"reference p95s: {sorted(round(r['metrics'][key], 3) for r in refs)}")
    print(
        f"metric {key}: measured p95 {p95:.3f} ms; budgets {p95 * 1.2:.3f} (loose) and {p95 * 0.8:.3f} (tight)"
    )
    with tempfile.TemporaryDirectory(prefix="kdpipe-gate-") as work:
        passes, fails, retries, seen = gate_rounds(args, key, p95, Path(work))
    print(
        f"\nloose budget passed {passes}/{args.rounds}; tight budget failed {fails}/{args.rounds}; "
        f"p95 ranged {min(seen):.3f}-{max(seen):.3f} ms (last measurement of each gate); "
        f"{retries} confirming re-measurements"
    )

    fidelity(args.run, report, args.alternations)


def gate_rounds(args: argparse.Namespace, key: str, p95: float, work: Path):
    """Gate the run `args.rounds` times against a budget 20 % above `p95` and one 20 % below."""
    loose, tight = work / "loose.yaml", work / "tight.yaml"
    loose.write_text(f"{key}: {{max: {p95 * 1.2:.4f}}}\n")
    tight.write_text(f"{key}: {{max: {p95 * 0.8:.4f}}}\n")
    passes = fails = retries = 0
    seen: list[float] = []
    for i in range(args.rounds):
        for budget in (loose, tight):
            proc = kdpipe("gate", str(args.run / "report.json"), "--budgets", str(budget),
                          "--measure", "--confirm", str(args.confirm), "--quiet")  # fmt: skip
            if proc.returncode not in (0, 1):
                sys.exit(f"gate failed: {proc.stderr[-500:]}")
            seen.append(json.loads((args.run / "report.json").read_text())["metrics"][key])
            retries += proc.stderr.count("measuring again")
            if budget == loose:
                passes += proc.returncode == 0
            else:
                fails += proc.returncode == 1
        print(
            f"round {i + 1}: p95 {seen[-2]:.3f} / {seen[-1]:.3f} ms  loose pass {passes}/{i + 1}  "
            f"tight fail {fails}/{i + 1}  re-measurements so far {retries}",
            flush=True,
        )
    return passes, fails, retries, seen


def fidelity(run: Path, report: dict, alternations: int) -> None:
    """kdpipe's p50 against the plain loop, in this one process. The machine's speed drifts by
    tens of percent over seconds, so each alternation times kdpipe, the plain loop and the plain
    loop again in a random order and compares them within the alternation; the median of the
    paired ratios is reported. The second plain loop is a null control: the paired difference
    that comparing a loop with itself reads here is the bench's own noise floor."""
    from kdpipe.core import ui
    from kdpipe.core.config import ProfileConfig
    from kdpipe.stages.profile_files import profile_targets

    ui.set_quiet(True)
    threads = report["environment"]["threads"]
    onnx_path = run / "export" / "student.onnx"
    shape = [1, *report["data"]["input_size"]]
    settings = ProfileConfig(batch_sizes=[1], memory=False, threads=threads, min_seconds=1.0)
    times: dict[str, list[float]] = {"kdpipe": [], "plain": [], "plain again": []}
    calls = 600
    order_rng = np.random.default_rng(0)
    for _ in range(alternations):
        # A fixed order would give one of them the machine as another left it, every time.
        for who in order_rng.permutation(list(times)):
            if who == "kdpipe":
                r = profile_targets([str(onnx_path)], settings, shape[1:])
                times[who].append(r["latency"][0]["p50_ms"])
                calls = r["latency"][0]["iters"]
            else:
                times[who].append(plain_loop_p50(onnx_path, shape, threads, calls=calls))
    plain = np.asarray(times["plain"])
    ratios = np.asarray(times["kdpipe"]) / plain
    null = np.asarray(times["plain again"]) / plain
    print(
        f"ONNX FP32 batch 1 p50 over {alternations} alternations ({os.cpu_count()} cores, "
        f"{threads} threads): kdpipe median {np.median(times['kdpipe']):.3f} ms (range "
        f"{min(times['kdpipe']):.3f}-{max(times['kdpipe']):.3f}), plain loop "
        f"{np.median(plain):.3f} ms ({plain.min():.3f}-{plain.max():.3f}); median paired "
        f"difference {100 * (np.median(ratios) - 1):+.1f} % (pairs {ratios.min():.2f}-"
        f"{ratios.max():.2f}); null control, plain loop against itself: "
        f"{100 * (np.median(null) - 1):+.1f} % (pairs {null.min():.2f}-{null.max():.2f})"
    )


if __name__ == "__main__":
    main()
