"""report.html: one self-contained page (plots inline, no network) from report.json."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader

from kdpipe.report import plots
from kdpipe.report.markdown import export_rows, memory_text


def render_html(report: dict, samples: dict[str, list[float]]) -> str:
    # Escape every value: names come from the user's folders and files, and a report.json
    # given to `kdpipe report` may come from anyone. (select_autoescape() chose by extension,
    # and "report.html.j2" does not end in .html: nothing was escaped.)
    env = Environment(loader=PackageLoader("kdpipe.report", "templates"), autoescape=True)
    figures = [
        (
            "Accuracy vs latency for every model × backend × precision (* and dashed: Pareto front)",
            plots.accuracy_vs_latency(report),
        ),
        ("Latency distributions (every timed call)", plots.latency_distributions(report, samples)),
        ("Latency vs batch size", plots.latency_vs_batch(report)),
        ("Distillation training curves", plots.training_curves(report)),
    ]
    env.filters["memory"] = memory_text
    return env.get_template("report.html.j2").render(
        r=report, s=report["summary"], plots=figures, export_rows=export_rows(report["export"])
    )
