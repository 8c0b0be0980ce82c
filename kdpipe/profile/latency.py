"""Timing methodology: warm up, then time every call, in two passes.

Interleaved, for ratios: each callable is warmed up (>= `warmup` calls and >= `warmup_seconds`),
then all are timed in rounds (A B C A B C ...; each round starts with untimed calls that bring
the model back into the caches), so a slow spell of the machine hits every model alike and
ratios between them survive the noise. Alone, for absolute figures: each callable in turn in a
plain loop, as an application running that one model sees it (caches its own, onnxruntime's
threads spinning between calls). Either pass times each callable until it has >= `min_iters`
calls and >= `min_seconds` of timings, with `time.perf_counter_ns` around every call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)

ROUND_CALLS = 20  # timed calls per model per round
# Untimed calls at the start of each round. After a switch from another model an onnxruntime
# session needs several calls, not one, to reach the steady state a plain loop over one model
# (trtexec, onnxruntime_perf_test) measures: with one re-warm call and 5 timed, the first
# timed call of a round read +25 % (INT8 student) and the round's p95 +20 %; with 5 re-warm
# calls the first timed call is within 1 % of the last.
# Torch eager barely cares. Untimed share: 20 % of calls (1 + 5 had 17 %).
REWARM_CALLS = 5


def warm_up(fn: Callable[[], object], calls: int, seconds: float) -> None:
    start, n = time.perf_counter(), 0
    while n < calls or time.perf_counter() - start < seconds:
        fn()
        n += 1


def timed_call(fn: Callable[[], object], out: list[float]) -> float:
    """Call `fn` once, append its milliseconds to `out`; return its seconds."""
    t0 = time.perf_counter_ns()
    fn()
    ms = (time.perf_counter_ns() - t0) / 1e6
    out.append(ms)
    return ms / 1e3


def measure_interleaved(
    calls: dict[K, Callable[[], object]],
    warmup: int = 10,
    warmup_seconds: float = 0.5,
    min_iters: int = 200,
    min_seconds: float = 2.0,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[K, list[float]]:
    """Per-call latencies in milliseconds for every callable, measured interleaved."""
    for fn in calls.values():
        warm_up(fn, warmup, warmup_seconds)
    samples: dict[K, list[float]] = {k: [] for k in calls}
    spent = dict.fromkeys(calls, 0.0)
    active = list(calls)
    while active:
        for key in active:
            fn, out = calls[key], samples[key]
            for _ in range(REWARM_CALLS):
                fn()
            for _ in range(ROUND_CALLS):
                spent[key] += timed_call(fn, out)
        active = [k for k in active if len(samples[k]) < min_iters or spent[k] < min_seconds]
        if on_round is not None:
            on_round(len(calls) - len(active), len(calls))
    return samples


def measure_alone(
    calls: dict[K, Callable[[], object]],
    warmup: int = 10,
    warmup_seconds: float = 0.5,
    min_iters: int = 200,
    min_seconds: float = 2.0,
    on_round: Callable[[int, int], None] | None = None,
) -> dict[K, list[float]]:
    """Per-call latencies in milliseconds for every callable, each timed alone in turn."""
    samples: dict[K, list[float]] = {}
    for done, (key, fn) in enumerate(calls.items(), start=1):
        warm_up(fn, warmup, warmup_seconds)
        out, spent = samples.setdefault(key, []), 0.0
        while len(out) < min_iters or spent < min_seconds:
            spent += timed_call(fn, out)
        if on_round is not None:
            on_round(done, len(calls))
    return samples


def summarize(ms: list[float], batch_size: int) -> dict[str, float]:
    """Percentiles, spread and throughput (images/s) of per-call latencies."""
    a = np.asarray(ms, dtype=np.float64)
    mean = float(a.mean())
    return {
        "iters": int(a.size),
        "min_ms": float(a.min()),
        "mean_ms": mean,
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "cv": float(a.std() / mean) if mean > 0 else 0.0,
        "throughput": batch_size * 1000.0 / mean if mean > 0 else 0.0,
    }
