"""The summary table printed at the end of `kdpipe run`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from kdpipe.report.markdown import basis_text


def print_summary(r: dict, console: Console) -> None:
    """On a console without markup (cli.stdout): names from the report are printed as they are."""
    s = r["summary"]
    table = Table(title=f"{r['teacher']['arch']} -> {r['student']['arch']} on {r['data']['name']}")
    for col in (
        "model",
        "backend",
        "precision",
        "top-1",
        "bs",
        "p50 ms",
        "p95 ms",
        "img/s",
        "size MB",
    ):
        table.add_column(
            col, justify="right" if col not in ("model", "backend", "precision") else "left"
        )
    models = {(m["model"], m["backend"], m["precision"]): m for m in r["models"]}
    for e in r["latency"]:
        m = models[(e["model"], e["backend"], e["precision"])]
        table.add_row(
            e["model"],
            e["backend"],
            e["precision"],
            f"{100 * m['accuracy']:.2f}%",
            str(e["batch_size"]),
            f"{e['p50_ms']:.3f}",
            f"{e['p95_ms']:.3f}",
            f"{e['throughput']:.0f}",
            f"{m['size_bytes'] / 1e6:.2f}",
        )
    console.print(table)
    console.print(
        Text.assemble(
            "accuracy retention ",
            (f"{100 * s['accuracy_retention']:.2f}%", "bold"),
            "   speedup vs teacher ",
            (f"{s['speedup_vs_teacher']:.2f}x", "bold"),
            f" (batch {s['speedup_basis']['batch_size']}, {basis_text(s['speedup_basis'])})   "
            "params ",
            (f"{s['param_compression']:.1f}x", "bold"),
            " fewer   file ",
            (f"{s['size_compression']:.1f}x", "bold"),
            " smaller",
        )
    )
    shipped = s.get("shipped")
    if shipped:
        console.print(
            Text.assemble(
                "ship ",
                (f"{shipped['precision']} on {shipped['backend']}", "bold"),
                f": {shipped['p50_ms']:.3f} ms p50 at batch {shipped['batch_size']}",
                *(f"; {u}" for u in s.get("upsets") or []),
            )
        )
