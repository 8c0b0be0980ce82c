"""Write a run's report files: report.json (unless rebuilding from it), report.md, report.html."""

from __future__ import annotations

from pathlib import Path

from kdpipe.core.runs import load_samples, write_json, write_text
from kdpipe.report.html import render_html
from kdpipe.report.markdown import render_markdown


def write_reports(run_dir: Path, report: dict, with_json: bool = True) -> None:
    """Both renderings are made before either file is written, so a report that cannot be
    rendered leaves the old files as they were."""
    markdown, html = render_markdown(report), render_html(report, load_samples(run_dir))
    if with_json:
        write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", markdown)
    write_text(run_dir / "report.html", html)
