"""The tables `kdpipe profile`, `kdpipe gate` and `kdpipe compare` print."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Column, Table
from rich.text import Text

from kdpipe.report.compare import Change
from kdpipe.report.gate import Verdict, budget_text, margin


def profile_table(results: dict) -> Table:
    table = Table(
        Column("model", overflow="fold"),
        *("backend", "precision", "batch", "p50 ms", "p95 ms", "p99 ms", "cv", "img/s"),
        "peak RSS MB",
        title="kdpipe profile",
    )
    for e in results["latency"]:
        key = f"{e['model']}.{e['backend']}.{e['precision']}"
        rss = results["memory"].get(key, {}).get("peak_rss_over_baseline_bytes")
        table.add_row(
            e["model"],
            e["backend"],
            e["precision"],
            str(e["batch_size"]),
            f"{e['p50_ms']:.3f}",
            f"{e['p95_ms']:.3f}",
            f"{e['p99_ms']:.3f}",
            f"{e['cv']:.2f}",
            f"{e['throughput']:.0f}",
            f"{rss / 1e6:.1f}" if rss is not None else "-",
        )
    return table


def gate_table(verdicts: Iterable[Verdict]) -> Table:
    table = Table(
        Column("metric", overflow="fold"),
        *("value", "95% CI", "budget", "margin"),
        Column("verdict", overflow="fold"),
        title="kdpipe gate",
    )
    for v in verdicts:
        ci = f"{v.low:.4g} - {v.high:.4g}" if v.low is not None else "-"
        verdict = (
            Text("pass", style="green")
            if v.passed
            else Text.assemble(("FAIL", "red"), f" {v.reason}")
        )
        table.add_row(v.metric, f"{v.value:.4g}", ci, budget_text(v), margin(v), verdict)
    return table


def compare_table(changes: Iterable[Change]) -> Table:
    table = Table(
        Column("metric", overflow="fold"),
        *("base", "new", "change", "%", "95 % CI of %", "rule"),
        title="kdpipe compare",
    )
    for c in changes:
        pct = f"{c.percent:+.1f}" if c.percent is not None else "-"
        span = c.percent_interval
        table.add_row(
            c.metric,
            f"{c.base:.4g}",
            f"{c.new:.4g}",
            f"{c.delta:+.4g}",
            pct,
            f"{span[0]:+.1f} .. {span[1]:+.1f}" if span else "",
            Text(c.broken_by or "", style="red"),
        )
    return table
