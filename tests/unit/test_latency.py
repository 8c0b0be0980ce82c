"""Timing methodology: statistics on known samples, interleaving, minimum calls and time."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kdpipe.profile.latency import REWARM_CALLS, ROUND_CALLS, measure_interleaved, summarize


def test_summary_statistics_on_known_values() -> None:
    ms = [float(v) for v in range(1, 101)]  # 1..100 ms
    s = summarize(ms, batch_size=4)
    assert s["iters"] == 100 and s["min_ms"] == 1 and s["max_ms"] == 100
    assert s["p50_ms"] == pytest.approx(50.5) and s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)
    assert s["mean_ms"] == pytest.approx(50.5) and s["std_ms"] == pytest.approx(np.std(ms, ddof=1))
    assert s["throughput"] == pytest.approx(4 * 1000 / 50.5)


def test_calls_are_interleaved_and_minimums_hold() -> None:
    order: list[str] = []
    calls = {
        "a": lambda: order.append("a"),
        "b": lambda: (order.append("b"), time.sleep(0.001)),
    }
    out = measure_interleaved(calls, warmup=2, warmup_seconds=0, min_iters=20, min_seconds=0.03)
    assert len(out["a"]) >= 20 and len(out["b"]) >= 20
    assert sum(out["b"]) / 1000 >= 0.03
    timed = order[2 + 2 :]  # after each one's warm-up calls
    per_round = REWARM_CALLS + ROUND_CALLS  # untimed re-warm calls, then the timed ones
    first_rounds = timed[: 4 * per_round]
    assert first_rounds == (["a"] * per_round + ["b"] * per_round) * 2
    assert len(out["a"]) % ROUND_CALLS == 0  # re-warm calls are not in the samples


def test_latencies_reflect_the_work() -> None:
    out = measure_interleaved(
        {"fast": lambda: time.sleep(0.0005), "slow": lambda: time.sleep(0.004)},
        warmup=1,
        warmup_seconds=0,
        min_iters=10,
        min_seconds=0,
    )
    assert np.median(out["slow"]) > 3 * np.median(out["fast"])
