"""`kdpipe compare BASE NEW`: every shared metric side by side, and regression rules for CI.

A rule is CATEGORY:CHANGE. `latency:+10%` fails when any latency grows by more than 10 %;
`accuracy:-0.5` fails when any accuracy falls by more than 0.5 percentage points. A
trailing % means relative change; without it the change is absolute (accuracies in points).
"""

from __future__ import annotations

from dataclasses import dataclass

from kdpipe.errors import ConfigError, did_you_mean

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


def compare(base: dict[str, float], new: dict[str, float], rules: list[Rule]) -> list[Change]:
    changes = [Change(k, base[k], new[k]) for k in sorted(base.keys() & new.keys())]
    for c in changes:
        for r in rules:
            if not CATEGORIES[r.category](c.metric):
                continue
            if r.relative:
                moved = c.percent
            else:
                moved = c.delta * (100 if r.category in POINTS else 1)
            if moved is None:
                continue
            if (r.change > 0 and moved > r.change) or (r.change < 0 and moved < r.change):
                c.broken_by = f"{r.category}:{r.change:+g}{'%' if r.relative else ''}"
    return changes
