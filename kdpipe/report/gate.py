"""`kdpipe gate`: judge a report against budgets; exit 0 when all hold, 1 when one broke.

Budgets file (YAML or TOML), one entry per metric key of report.json's `metrics`:

    budgets:
      student.ort-cpu.int8.bs1.p95_ms: {max: 5}
      summary.speedup_vs_teacher: {min: 4}
      summary.accuracy_retention: {min: 0.98}

Latency metrics (and the speedup) are judged on a 95 % bootstrap confidence interval over
the timed rounds (whole rounds of consecutive calls are resampled): a budget fails only when
the whole interval lies on the wrong side, so a noisy machine does not flip the verdict;
`strict` judges the point estimate instead. With `--measure`, a timing budget that is not a
clear pass is measured again (`--confirm`, default 2 more times) and breaks when most of
its measurements failed: a slow spell of a shared runner fails one measurement and passes
the others, a real regression fails most of them, and a lucky fast measurement does not
pass a budget the others break. When a student latency budget breaks there, a note says
whether the teacher, re-measured alongside, moved too (the machine changed speed) or held
steady (the student did).
"""

from __future__ import annotations

import math
import os
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from pydantic import Field, ValidationError

from kdpipe.core.errors import ConfigError, KdpipeError, closest
from kdpipe.core.runs import write_text
from kdpipe.core.structured import Open, first_problem, is_number, parse, read_settings, read_text

CI_STATS = {"p50_ms": 50, "p90_ms": 90, "p95_ms": 95, "p99_ms": 99, "mean_ms": None}
BOOTSTRAP = 2000


@dataclass
class Verdict:
    metric: str
    value: float
    low: float | None
    high: float | None
    min: float | None
    max: float | None
    passed: bool
    reason: str


def load_report(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"report {path} does not exist", "pass the report.json of a kdpipe run")
    try:
        report = parse(read_text(path), "json")
        if not isinstance(report.get("metrics"), dict):
            raise ValueError("no 'metrics' map")
        for metric, value in report["metrics"].items():  # a budget must never compare a string
            if not is_number(value):
                raise ValueError(f"metric '{metric}' is {reprlib.repr(value)}, not a number")
        _GateView.model_validate(report)
    except OSError as e:
        raise ConfigError(f"cannot read report {path}: {e.strerror}", "check the path") from None
    except ValidationError as e:
        raise ConfigError(
            f"report {path} is corrupt or too old ({first_problem(e)})",
            "re-run kdpipe run or kdpipe report",
        ) from None
    except (ValueError, AttributeError) as e:
        raise ConfigError(
            f"report {path} is corrupt or too old ({e})", "re-run kdpipe run or kdpipe report"
        ) from None
    return report


# The rest of report.json that gate and compare read (optional: older reports lack parts),
# checked once here rather than failing as KeyError / TypeError deep in a bootstrap.
class _Side(Open):
    backend: str
    precision: str


class _Basis(Open):
    batch_size: int
    teacher: _Side
    student: _Side


class _Summary(Open):
    speedup_basis: _Basis | None = None


class _Round(Open):
    timed_calls: int = Field(1, ge=1)


class _Settings(Open):
    round: _Round | None = None


class _GateView(Open):
    summary: _Summary | None = None
    profile_settings: _Settings | None = None
    environment: dict | None = None


def load_budgets(path: Path) -> dict[str, dict[str, float]]:
    data = read_settings(path, "budgets file", "YAML, TOML or JSON")
    if isinstance(data, dict) and "budgets" in data:
        data = data["budgets"]
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"budgets file {path} holds no budgets", "write `budgets: {METRIC: {max: N}}`"
        )
    budgets: dict[str, dict[str, float]] = {}
    for metric, limits in data.items():
        ok = isinstance(limits, dict) and limits and set(limits) <= {"min", "max"}
        if not ok or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in limits.values()
        ):
            raise ConfigError(
                f"budget for '{metric}' must be a mapping with numeric min and/or max, got {reprlib.repr(limits)}",
                f"e.g. {metric}: {{max: 5}}",
            )
        budgets[str(metric)] = {k: float(v) for k, v in limits.items()}
    return budgets


OLD_ROUND_CALLS = 5  # timed calls per round in reports that do not record it (older profiles)
MIN_BLOCKS = 10


def round_length(report: dict) -> int:
    """Timed calls per model per interleaved round, as the profile recorded them."""
    rounds = (report.get("profile_settings") or {}).get("round") or {}
    return int(rounds.get("timed_calls", OLD_ROUND_CALLS))


def bootstrap(samples: list[float], stat: str, rng: np.random.Generator, block: int) -> np.ndarray:
    """Bootstrap distribution of `stat`, resampling whole rounds (`block` consecutive calls),
    not single calls: calls of one round share the machine's state (a slow spell spans many
    of them), so resampling single calls treats them as independent and gives intervals
    too narrow - 1.5 to 3x on the default run's samples."""
    a = np.asarray(samples)
    block = max(1, min(block, len(a) // MIN_BLOCKS))
    blocks = a[: len(a) // block * block].reshape(-1, block)
    idx = rng.integers(0, len(blocks), size=(BOOTSTRAP, len(blocks)))
    draws = blocks[idx].reshape(BOOTSTRAP, -1)
    q = CI_STATS[stat]
    return draws.mean(axis=1) if q is None else np.percentile(draws, q, axis=1)


def interval95(draws: np.ndarray) -> tuple[float, float]:
    """The central 95 % of bootstrap draws."""
    low, high = np.percentile(draws, (2.5, 97.5))
    return float(low), float(high)


def confidence_interval(
    metric: str, report: dict, samples: dict[str, list[float]]
) -> tuple[float, float] | None:
    """95 % bootstrap interval of a latency statistic or of the speedup, if samples exist."""
    rng = np.random.default_rng(0)
    block = round_length(report)
    key, _, stat = metric.rpartition(".")
    if stat in CI_STATS and key in samples:
        dist = bootstrap(samples[key], stat, rng, block)
    elif metric == "summary.speedup_vs_teacher" and (report.get("summary") or {}).get(
        "speedup_basis"
    ):
        basis = report["summary"]["speedup_basis"]
        bs, t, s = basis["batch_size"], basis["teacher"], basis["student"]
        t_key = f"teacher.{t['backend']}.{t['precision']}.bs{bs}"
        s_key = f"student.{s['backend']}.{s['precision']}.bs{bs}"
        # the ratio's own samples: both models timed in the same rounds
        t_key, s_key = (
            k + ".interleaved" if k + ".interleaved" in samples else k for k in (t_key, s_key)
        )
        if t_key not in samples or s_key not in samples:
            return None
        dist = bootstrap(samples[t_key], "p50_ms", rng, block) / bootstrap(
            samples[s_key], "p50_ms", rng, block
        )
    else:
        return None
    return interval95(dist)


def judge(
    report: dict,
    budgets: dict[str, dict[str, float]],
    samples: dict[str, list[float]],
    strict: bool,
) -> list[Verdict]:
    metrics = report["metrics"]
    unknown = [m for m in budgets if m not in metrics]
    if unknown:
        near = closest(unknown[0], metrics)
        raise ConfigError(
            f"unknown metric '{unknown[0]}' in budgets",
            f"closest valid: {', '.join(near)}"
            if near
            else "see report.json's `metrics` for valid keys",
        )
    verdicts = []
    for metric, limits in budgets.items():
        value = metrics[metric]
        ci = None if strict else confidence_interval(metric, report, samples)
        low, high = ci if ci else (value, value)
        reasons = []
        if math.isnan(value) or math.isnan(low) or math.isnan(high):  # every comparison is False
            reasons.append("value is NaN")
        if "max" in limits and low > limits["max"]:
            reasons.append(f"{'interval' if ci else 'value'} above max {limits['max']:g}")
        if "min" in limits and high < limits["min"]:
            reasons.append(f"{'interval' if ci else 'value'} below min {limits['min']:g}")
        verdicts.append(
            Verdict(
                metric,
                value,
                ci[0] if ci else None,
                ci[1] if ci else None,
                limits.get("min"),
                limits.get("max"),
                not reasons,
                "; ".join(reasons),
            )
        )
    return verdicts


def is_timing(metric: str) -> bool:
    """A figure measured by timing (it can flip with the machine's speed); not accuracy/size."""
    return metric.rpartition(".")[2] in CI_STATS or metric == "summary.speedup_vs_teacher"


def clear_pass(v: Verdict) -> bool:
    """Passed with the whole interval on the right side of the budget (strict: the value),
    not by the benefit of the doubt an interval that reaches past the budget gives."""
    low, high = (v.low, v.high) if v.low is not None and v.high is not None else (v.value, v.value)
    return v.passed and (v.max is None or high <= v.max) and (v.min is None or low >= v.min)


def judge_confirmed(
    measure: Callable[[], tuple[dict, dict[str, list[float]]]],
    budgets: dict[str, dict[str, float]],
    strict: bool,
    confirm: int,
    on_retry: Callable[[list[str], int], None] | None = None,
) -> list[Verdict]:
    """Judge `measure()`'s report. A timing budget whose first measurement is a clear pass
    holds; any other is measured again, up to `confirm` more times, and breaks when more than
    half of its `confirm + 1` measurements failed (measuring stops as soon as that is decided).
    A slow spell of a shared machine fails one measurement and passes the next two; a real
    regression fails most of them; and a lucky fast measurement cannot pass a budget the
    others break. The verdict shown is the latest measurement that agrees with the outcome.
    Other budgets (accuracy, size): the last measurement."""
    total = confirm + 1
    fails_to_break = total // 2 + 1
    passes_to_hold = total - total // 2
    history: dict[str, list[Verdict]] = {}
    decided: dict[str, Verdict] = {}
    for attempt in range(total):
        report, samples = measure()
        for v in judge(report, budgets, samples, strict):
            if not is_timing(v.metric):
                decided[v.metric] = v
                continue
            if v.metric in decided:
                continue
            seen = history.setdefault(v.metric, [])
            seen.append(v)
            fails = [h for h in seen if not h.passed]
            passes = [h for h in seen if h.passed]
            if (len(seen) == 1 and clear_pass(v)) or len(passes) >= passes_to_hold:
                decided[v.metric] = passes[-1]
            elif len(fails) >= fails_to_break:
                counted = f" (in {len(fails)} of {len(seen)} measurements)" if len(seen) > 1 else ""
                decided[v.metric] = replace(fails[-1], reason=fails[-1].reason + counted)
        open_ = [m for m in budgets if m not in decided]
        if not open_:
            break
        if on_retry is not None:
            on_retry(open_, attempt + 1)
    return [decided[m] for m in budgets]


DRIFT = 0.10  # a teacher more than 10 % off its reported latency: the machine changed speed


def given_metrics(path: Path) -> dict[str, float]:
    """The report's metrics as given, before --measure rewrites it ({} when there is none)."""
    try:
        return dict(load_report(path)["metrics"])  # load_report checks the map is there
    except KdpipeError:
        return {}


def drift_notes(
    before: dict[str, float], after: dict[str, float], verdicts: list[Verdict]
) -> list[str]:
    """Why a latency budget broke on a re-measurement, told by the teacher measured alongside:
    `before` is the report's metrics as they were given, `after` the re-measured ones. A
    teacher that got slower too says the machine did; with a teacher as fast as before, a
    student slower than before says the student did, and one no slower (within DRIFT) says
    the budget is simply below it."""
    notes = []
    for v in verdicts:
        model, _, rest = v.metric.partition(".")
        parts = rest.split(".")
        if v.passed or model != "student" or len(parts) != 4 or not parts[3].endswith("_ms"):
            continue
        backend, precision, bs, stat = parts
        candidates = [
            f"teacher.{backend}.{precision}.{bs}.{stat}",
            f"teacher.torch-cpu.fp32.{bs}.{stat}",
        ]
        candidates += sorted(
            k for k in after if k.startswith("teacher.") and k.endswith(f".{bs}.{stat}")
        )
        ref = next((k for k in candidates if k in before and k in after and before[k] > 0), None)
        if ref is None or not before.get(v.metric):
            continue
        teacher = after[ref] / before[ref] - 1
        student = after[v.metric] / before[v.metric] - 1
        moved = f"{ref} {before[ref]:.4g} -> {after[ref]:.4g} ms ({teacher:+.0%})"
        if teacher > DRIFT:
            notes.append(
                f"{v.metric} moved {student:+.0%} since the report, and the teacher measured "
                f"alongside it moved too: {moved}. This machine is slower now than when the "
                "report was made; summary.speedup_vs_teacher, judged on the interleaved ratio, "
                "does not move with the machine."
            )
        elif abs(teacher) <= DRIFT:
            if student <= DRIFT:
                notes.append(
                    f"{v.metric} measured {before[v.metric]:.4g} -> {after[v.metric]:.4g} ms "
                    f"({student:+.0%}) since the report, the teacher alongside it {moved}: the "
                    "student did not get slower; the budget lies below what it measures on this "
                    "machine."
                )
            else:
                notes.append(
                    f"{v.metric} moved {student:+.0%} since the report while the teacher measured "
                    f"alongside it held steady ({moved}): the student itself is slower."
                )
    return notes


def margin(v: Verdict) -> str:
    """How far the value is from its limit, as a share of the limit (+ = room to spare)."""
    parts = []
    if v.max is not None and v.max != 0:
        parts.append(f"{100 * (v.max - v.value) / abs(v.max):+.1f}%")
    if v.min is not None and v.min != 0:
        parts.append(f"{100 * (v.value - v.min) / abs(v.min):+.1f}%")
    return " ".join(parts)


def budget_text(v: Verdict) -> str:
    return " ".join(
        s
        for s in (
            f">= {v.min:g}" if v.min is not None else "",
            f"<= {v.max:g}" if v.max is not None else "",
        )
        if s
    )


def write_junit(verdicts: list[Verdict], path: Path) -> None:
    suite = ET.Element(
        "testsuite",
        name="kdpipe gate",
        tests=str(len(verdicts)),
        failures=str(sum(not v.passed for v in verdicts)),
    )
    for v in verdicts:
        case = ET.SubElement(suite, "testcase", classname="kdpipe.report.gate", name=v.metric)
        if not v.passed:
            failure = ET.SubElement(case, "failure", message=v.reason)
            failure.text = f"{v.metric} = {v.value:g}, budget {budget_text(v)}"

    write_text(path, ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n")


def markdown_summary(verdicts: list[Verdict]) -> str:
    ok = all(v.passed for v in verdicts)
    lines = [
        f"### kdpipe gate: {'passed' if ok else 'FAILED'}",
        "",
        "| metric | value | 95% CI | budget | margin | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts:
        ci = f"{v.low:.4g} – {v.high:.4g}" if v.low is not None else "–"
        lines.append(
            f"| `{v.metric}` | {v.value:.4g} | {ci} | {budget_text(v)} | {margin(v)} | "
            f"{'pass' if v.passed else 'FAIL: ' + v.reason} |"
        )
    return "\n".join(lines) + "\n"


def append_github_summary(verdicts: list[Verdict]) -> None:
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(markdown_summary(verdicts))
