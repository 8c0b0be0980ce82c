"""`kdpipe compare BASE NEW`: every shared metric side by side, and regression rules for CI.

A rule is CATEGORY:CHANGE. `latency:+10%` fails when any latency grows by more than 10 %;
`accuracy:-0.5` fails when any accuracy falls by more than 0.5 percentage points. A
trailing % means relative change; without it the change is absolute (accuracies in points).

Latencies are judged as the gate judges them: where both runs kept their per-call samples
(profile/samples.json beside report.json), on the 95 % bootstrap interval of the change, so
a latency rule breaks only when the whole interval lies past it; two runs of an unchanged
model on a noisy runner differ by more than 10 % in p95 often enough to fail CI otherwise.
`strict` (or a report without samples) judges the point estimates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kdpipe.core.errors import ConfigError, did_you_mean
from kdpipe.report.gate import CI_STATS, bootstrap, interval95, round_length

CATEGORIES = {
    "latency": lambda k: k.endswith("_ms") and not k.endswith("std_ms"),
    "throughput": lambda k: k.endswith(".throughput"),
    "accuracy": lambda k: k.endswith(".accuracy") or k.endswith("accuracy_retention"),
    "size": lambda k: k.endswith("size_bytes"),
    "speedup": lambda k: "speedup" in k,
}
# Accuracies are stored as fractions; absolute rules for them are written in points.
POINTS = {"accuracy"}


@dataclass
class Rule:
    category: str
    change: float
    relative: bool


@dataclass
class Change:
    metric: str
    base: float
    new: float
    broken_by: str = ""
    # 95 % intervals of the change, where both runs kept samples: in % and in the metric's unit
    percent_interval: tuple[float, float] | None = None
    delta_interval: tuple[float, float] | None = None

    @property
    def delta(self) -> float:
        return self.new - self.base

    @property
    def percent(self) -> float | None:
        return 100 * self.delta / abs(self.base) if self.base else None


def parse_rules(text: str) -> list[Rule]:
    rules = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        cat, sep, value = part.partition(":")
        if cat not in CATEGORIES:
            raise ConfigError(
                f"unknown --fail-on category '{cat}'",
                did_you_mean(cat, CATEGORIES) or f"use: {', '.join(CATEGORIES)}",
            )
        try:
            if not sep or value.strip()[0] not in "+-":
                raise ValueError
            relative = value.strip().endswith("%")
            change = float(value.strip().rstrip("%"))
        except (ValueError, IndexError):
            raise ConfigError(
                f"--fail-on rule '{part}' is not CATEGORY:+N[%] or CATEGORY:-N[%]",
                "e.g. latency:+10%,accuracy:-0.5",
            ) from None
        rules.append(Rule(cat, change, relative))
    return rules


@dataclass
class Side:
    """One run for `compare`: its metrics and, where kept, its raw per-call latencies."""

    metrics: dict[str, float]
    samples: dict[str, list[float]]
    round_calls: int

    @classmethod
    def of(cls, report: dict, samples: dict[str, list[float]]) -> Side:
        return cls(report["metrics"], samples, round_length(report))


def _intervals(
    metric: str, base: Side, new: Side
) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """95 % bootstrap intervals of new - base (in % and absolute) for a latency statistic."""
    key, _, stat = metric.rpartition(".")
    if stat not in CI_STATS or key not in base.samples or key not in new.samples:
        return None
    rng = np.random.default_rng(0)
    b = bootstrap(base.samples[key], stat, rng, base.round_calls)
    n = bootstrap(new.samples[key], stat, rng, new.round_calls)
    return interval95(100 * (n / b - 1)), interval95(n - b)


MACHINE_KEYS = ("cpu", "cpu_id", "cores", "threads", "gpu")


def machine_difference(base: dict, new: dict) -> str:
    """What differs between the machines two reports were measured on (their `environment`),
    as one line, or "" when nothing recorded by both differs."""
    differ = [
        f"{k} {base[k]} vs {new[k]}"
        for k in MACHINE_KEYS
        if k in base and k in new and base[k] != new[k]
    ]
    if not differ:
        return ""
    return (
        f"the two runs were measured on different machines ({'; '.join(differ)}): "
        "latency changes include the machines' difference"
    )


def compare(base: Side, new: Side, rules: list[Rule], strict: bool = False) -> list[Change]:
    shared = sorted(base.metrics.keys() & new.metrics.keys())
    changes = [Change(k, base.metrics[k], new.metrics[k]) for k in shared]
    for c in changes:
        found = None if strict else _intervals(c.metric, base, new)
        if found:
            c.percent_interval, c.delta_interval = found
        for r in rules:
            if not CATEGORIES[r.category](c.metric):
                continue
            scale = 100 if r.category in POINTS and not r.relative else 1
            span = c.percent_interval if r.relative else c.delta_interval
            if math.isnan(c.new):  # NaN passes every comparison: a metric lost is a regression
                c.broken_by = f"{r.category}:{r.change:+g}{'%' if r.relative else ''}"
                continue
            if span is not None:
                low, high = span
            elif r.relative:
                if c.percent is None:
                    continue
                low = high = c.percent
            else:
                low = high = c.delta * scale
            # broken only when the whole interval lies past the rule (a point: itself)
            if (r.change > 0 and low > r.change) or (r.change < 0 and high < r.change):
                c.broken_by = f"{r.category}:{r.change:+g}{'%' if r.relative else ''}"
    return changes
