"""report.html: self-contained, and it renders with its plots and tables in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import kdpipe, kdpipe_here

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_is_self_contained_with_every_section(first_run) -> None:
    out, _, _ = first_run
    html = (out / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']https?://""", html), "the page must not fetch anything"
    assert html.count('src="data:image/png;base64,') == 4
    headline = html.index('id="headline"')
    assert (
        headline
        < html.index("<h2>Plots")
        < html.index('id="models"')
        < html.index('id="environment"')
    )
    for section in (
        "accuracy retention",
        "speedup vs teacher",
        "Pareto front",
        'id="latency"',
        'id="export"',
    ):
        assert section in html


def test_report_command_rebuilds_md_and_html(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, env = first_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.onnx", "*.pt"))
    (copy / "report.html").unlink()
    (copy / "report.md").unlink()
    proc = kdpipe("report", str(copy), env=env)
    assert proc.returncode == 0, proc.stderr
    assert (copy / "report.html").read_text().count("data:image/png") == 4
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    proc = kdpipe("report", str(tmp_path / "nowhere"), env=env)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    # A partial or hand-edited report.json: one line, and the pages it had stay as they were.
    import json

    whole = json.loads((copy / "report.json").read_text())
    before = (copy / "report.md").read_text(), (copy / "report.html").read_text()
    for damage in ("summary", "latency", "student"):
        broken = {k: v for k, v in whole.items() if k != damage}
        if damage == "student":
            broken["student"] = "x"
        (copy / "report.json").write_text(json.dumps(broken))
        proc = kdpipe_here(capsys, "report", str(copy))
        assert proc.returncode == 2, proc.stderr
        assert f"report {copy / 'report.json'} is incomplete" in " ".join(proc.stderr.split())
        assert ((copy / "report.md").read_text(), (copy / "report.html").read_text()) == before


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)
def test_page_renders_in_headless_chromium(first_run, tmp_path: Path) -> None:
    out, _, _ = first_run
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
    ]
    page = (out / "report.html").resolve().as_uri()
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120
    )
    assert 'data-plots-loaded="4"' in dom.stdout, dom.stderr[-2000:]
    assert dom.stdout.count("<table") >= 4
    shot = tmp_path / "page.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1200,2400", page],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000


def test_names_in_a_report_are_text_not_markup(
    first_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Names come from users' folders and files, and `kdpipe report` renders a report.json that
    # may come from anyone (a pull request's CI artifact): nothing in them may become HTML on
    # the page or rich markup on the terminal (a `[/x]` was an internal MarkupError).
    import json

    from kdpipe.cli import stdout
    from kdpipe.report.terminal import print_summary

    out, _, _ = first_run
    copy = tmp_path / "run[/x]"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.onnx", "*.pt"))
    report = json.loads((copy / "report.json").read_text())
    report["data"]["name"] = "<img src=x onerror=alert(1)>"
    report["teacher"]["arch"] = "[/x][bold]t<script>alert(2)</script>"
    for row in report["models"] + report["latency"]:  # TeX for matplotlib between two "$"
        row["model"] = row["model"].replace("student", r"$\student$")
    (copy / "report.json").write_text(json.dumps(report))
    proc = kdpipe_here(capsys, "report", str(copy))
    assert proc.returncode == 0, proc.stderr
    assert f"report: {copy / 'report.md'}" in proc.stdout  # the path as it is
    html = (copy / "report.html").read_text()
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "[/x][bold]t&lt;script&gt;" in html
    assert html.count("data:image/png") == 4 and r"$\student$" in html
    md = (copy / "report.md").read_text()
    assert "<img src=x" not in md and "on &lt;img src=x onerror=alert(1)&gt;" in md
    with stdout.capture() as seen:
        print_summary(report, stdout)
    assert "[/x][bold]t<script>alert(2)</script> -> " in seen.get()
