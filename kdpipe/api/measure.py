"""Measuring and judging outside a run: profile any mix of models, gate a report against
budgets (re-measured on this machine on request), compare two reports, rebuild a report's
pages, export a run's student again or a weights file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdpipe.api.pipeline import export_weights, run
from kdpipe.core import ui
from kdpipe.core.config import build_config
from kdpipe.core.errors import BudgetError, ConfigError, first_line
from kdpipe.core.runs import load_run_config, load_samples, write_json
from kdpipe.report import gate as g
from kdpipe.report.compare import Change, Side, machine_difference, parse_rules
from kdpipe.report.compare import compare as diff
from kdpipe.report.write import write_reports


def profile_run_again(run_dir: Path, overrides: dict[str, Any], out: Path | None) -> dict:
    """A run directory alone is re-profiled into its own report, with its own settings and
    `overrides` on top (recorded in its config.yaml)."""
    cfg = build_config(load_run_config(run_dir), overrides, "profile")
    report = run(cfg, force=["profile"])
    if out is not None:  # besides the run's own report.json
        write_json(out, report)
    return report


def profile_files(
    targets: list[str], overrides: dict[str, Any], chw: list[int] | None, out: Path | None
) -> dict:
    """Any mix of ONNX files, TensorRT plans, bundles, ARCH:WEIGHTS and run directories,
    timed interleaved (stages/profile_files.py)."""
    from kdpipe.stages.profile_files import profile_targets  # onnx, tensorrt: only here

    results = profile_targets(targets, build_config({}, overrides, "profile").profile, chw)
    if out:
        write_json(out, results)
    return results


def rebuild_report(run_dir: Path) -> None:
    """report.md and report.html again from the run's report.json."""
    path = run_dir / "report.json"
    try:
        write_reports(run_dir, g.load_report(path), with_json=False)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # load_report checked the metrics map; the rest of a hand-edited or partial report
        # is found missing by the renderers themselves
        raise ConfigError(
            f"report {path} is incomplete ({type(e).__name__}: {first_line(e)})",
            "re-run kdpipe run (it writes a whole report.json), then kdpipe report",
        ) from None


@dataclass
class GateOutcome:
    verdicts: list[g.Verdict]
    notes: list[str] = field(default_factory=list)  # why a re-measured latency moved

    def raise_if_broken(self) -> None:
        broken = [v for v in self.verdicts if not v.passed]
        if broken:
            raise BudgetError(
                f"{len(broken)} of {len(self.verdicts)} budgets broken: "
                f"{', '.join(v.metric for v in broken)}",
                "see the table above",
            )


def gate(report: Path, budgets: Path, strict: bool, measure: bool, confirm: int) -> GateOutcome:
    """Judge `report` against `budgets`. With `measure`, the run's artifacts are profiled
    here first, and a timing budget that is not a clear pass is measured again, up to
    `confirm` more times, the majority deciding."""
    limits = g.load_budgets(budgets)  # bad budgets fail before minutes of measuring
    given = g.given_metrics(report) if measure else {}
    latest: dict[str, dict] = {}  # the last measurement's report, for the drift notes

    def measured() -> tuple[dict, dict[str, list[float]]]:
        if measure:
            run(build_config(load_run_config(report.parent), {}), force=["profile"])
        latest["report"] = g.load_report(report)
        return latest["report"], load_samples(report.parent)

    def retrying(unsettled: list[str], n: int) -> None:
        ui.warn(
            f"{', '.join(unsettled)}: not settled by {n} measurement{'s' * (n > 1)}; "
            f"measuring again ({n} of {confirm})"
        )

    verdicts = g.judge_confirmed(measured, limits, strict, confirm if measure else 0, retrying)
    notes = g.drift_notes(given, latest["report"]["metrics"], verdicts) if measure else []
    return GateOutcome(verdicts, notes)


def compare(base: Path, new: Path, fail_on: str, strict: bool) -> list[Change]:
    """Every metric the two reports share, with its change and the rule it breaks, if any."""
    rules = parse_rules(fail_on)
    sides, machines = [], []
    for path in (base, new):
        samples = load_samples(path.parent)
        if not samples and not strict and any(r.category == "latency" for r in rules):
            ui.info(
                f"compare: {path} has no profile/samples.json beside it; its latencies "
                "are compared as point estimates"
            )
        report = g.load_report(path)
        sides.append(Side.of(report, samples))
        machines.append(report.get("environment") or {})
    elsewhere = machine_difference(*machines)
    if elsewhere:
        ui.warn(elsewhere)
    return diff(sides[0], sides[1], rules, strict)


def export_again(
    run_dir: Path | None,
    weights: tuple[str | None, Path | None],
    options: dict[str, Any],
    data: dict[str, Any],
    out: Path | None,
) -> tuple[dict, Path]:
    """`kdpipe export`: a run's student again (its data fixes the images: `data` must be
    empty), or `weights` (arch, file) with the `data` overrides given; the results and where
    they were written."""
    arch, file = weights
    if (run_dir is None) == (file is None):
        raise ConfigError(
            "pass either a run directory or --arch with --weights", "e.g. kdpipe export runs/my-run"
        )
    if run_dir is not None:
        cfg = build_config(load_run_config(run_dir), options, "export")
        return run(cfg, until="export"), run_dir / "export"
    if not arch or file is None:
        raise ConfigError("--weights needs --arch", "e.g. --arch resnet18 --weights student.pt")
    where = out or Path("export")
    cfg = build_config({}, {**options, **data}, "export")
    return export_weights(arch, file, cfg, where), where
