"""The report stage: report.json (versioned, with the flat metrics map), report.md and
report.html in the run directory, from the results of every stage before it."""

from __future__ import annotations

from pathlib import Path

from kdpipe.core.runs import read_json
from kdpipe.export.bundle import write_bundle
from kdpipe.report.build import build_report
from kdpipe.report.gate import load_report
from kdpipe.report.shipping import BUNDLE_RUNTIMES
from kdpipe.report.write import write_reports
from kdpipe.stages.base import Context, Stage


def _ship(ctx: Context, report: dict) -> None:
    """bundle.json names the form the profile measured fastest (report/shipping.py)."""
    s = report["summary"]
    form = s.get("shipped")
    shipped = None
    if form is not None:
        shipped = {
            "runtime": BUNDLE_RUNTIMES[form["backend"]],
            "precision": form["precision"],
            "batch_size": form["batch_size"],
            "p50_ms": form["p50_ms"],
            "accuracy": form["accuracy"],
            "measured_on": report["environment"].get("cpu", ""),
        }
    exported = ctx.results["export"]
    write_bundle(
        ctx.folder("export"), ctx.data.info, exported.as_json(), ctx.cfg.out_dir(), shipped
    )


class ReportStage(Stage):
    """Always rebuilt: it records how long this run's stages took and which were reused."""

    name = "report"

    def fingerprint(self, ctx: Context) -> None:
        return None

    def outputs(self, ctx: Context) -> list[str]:
        return ["report.json", "report.md", "report.html"]

    def run(self, ctx: Context, folder: Path) -> dict:
        r, exported = ctx.results, ctx.folder("export")
        teacher_onnx = read_json(exported / "teacher.json") if ctx.cfg.export.teacher else None
        report = build_report(
            ctx.cfg,
            ctx.data.info,
            r["teacher"].metrics,
            r["distill"].metrics,
            r["export"],
            r["profile"].as_json(),
            ctx.times,
            {"teacher_onnx": teacher_onnx, "tensorrt": read_json(exported / "tensorrt.json")},
        ).as_json()
        write_reports(ctx.run_dir.root, report)
        _ship(ctx, report)
        return report

    def load(self, ctx: Context, folder: Path) -> dict:
        return load_report(ctx.run_dir.root / "report.json")


STAGE = ReportStage()
