"""`kdpipe profile`, `report`, `gate` and `compare`: measure models, render a run's report,
judge it against budgets, diff two reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table
from rich.text import Text

from kdpipe.cli.errors import errors_reported
from kdpipe.cli.shared import (
    BatchSizesOpt,
    DebugOpt,
    MemoryOpt,
    MinItersOpt,
    MinSecondsOpt,
    Opt,
    QuietOpt,
    ThreadsOpt,
    csv_list,
    profile_overrides,
    stdout,
)
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError, first_line
from kdpipe.core.runs import load_run_config


def profile(
    targets: Annotated[
        list[str], typer.Argument(help="Run dir, bundle dir, .onnx, .plan or ARCH:WEIGHTS.pt")
    ],
    batch_sizes: BatchSizesOpt = None,
    threads: ThreadsOpt = None,
    input_size: Annotated[
        str | None,
        Opt(
            help="The input's size after the batch: C,H,W for images (default: what the "
            "files fix, else 3,224,224)."
        ),
    ] = None,
    warmup: Annotated[int | None, Opt(help="Warm-up calls, at least.")] = None,
    min_iters: MinItersOpt = None,
    min_seconds: MinSecondsOpt = None,
    memory: MemoryOpt = None,
    out: Annotated[Path | None, Opt(help="Write the results as JSON here.")] = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Time models side by side (interleaved): a run directory again, or any ONNX/TensorRT/torch files.

    A run directory alone is re-profiled with its own settings; options given here replace them and are recorded in its config.yaml, so its report always says how it was measured. Among other targets it stands for its models (RUN/teacher, RUN/student: the bundle, teacher.onnx and both weight files)."""  # noqa: E501
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe import api
        from kdpipe.core.config import build_config
        from kdpipe.core.runs import write_json

        overrides = profile_overrides(batch_sizes, threads, warmup, min_iters, min_seconds, memory)
        run_dirs = [t for t in targets if (Path(t) / "config.yaml").is_file()]
        # A run directory alone is re-profiled into its own report; among other targets it
        # stands for its models (profile.standalone.run_dir_targets).
        if run_dirs and len(targets) == 1:
            if input_size is not None:
                raise ConfigError(
                    "--input-size does not apply to a run directory (its data fixes the size)",
                    "drop --input-size, or profile the run's ONNX file instead",
                )
            from kdpipe.report.terminal import print_summary

            cfg = build_config(load_run_config(Path(run_dirs[0])), overrides, "profile")
            report = api.run(cfg, force=["profile"])
            print_summary(report, stdout)
            if out is not None:  # besides the run's own report.json
                write_json(out, report)
            return
        from kdpipe.stages.profile_files import profile_targets

        cfg = build_config({}, overrides, "profile")
        chw = csv_list(input_size, int, "--input-size")
        if chw is not None and (not chw or any(v < 1 for v in chw)):
            raise ConfigError(
                f"--input-size takes positive sizes, got '{input_size}'",
                "e.g. --input-size 3,32,32",
            )
        results = profile_targets(targets, cfg.profile, chw)
        table = Table(
            Column("model", overflow="fold"),
            "backend",
            "precision",
            "batch",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "cv",
            "img/s",
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
        stdout.print(table)
        if out:
            write_json(out, results)
            stdout.print(f"results: {out}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A kdpipe run directory.")],
    debug: DebugOpt = False,
) -> None:
    """Rebuild report.md and report.html from the run's report.json."""
    with errors_reported(debug):
        from kdpipe.report.gate import load_report
        from kdpipe.report.write import write_reports

        path = run_dir / "report.json"
        try:
            write_reports(run_dir, load_report(path), with_json=False)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            # load_report checked the metrics map; the rest of a hand-edited or partial report
            # is found missing by the renderers themselves
            raise ConfigError(
                f"report {path} is incomplete ({type(e).__name__}: {first_line(e)})",
                "re-run kdpipe run (it writes a whole report.json), then kdpipe report",
            ) from None
        stdout.print(f"report: {run_dir / 'report.md'}  {run_dir / 'report.html'}")


def gate(
    report: Annotated[Path, typer.Argument(help="report.json of a kdpipe run.")],
    budgets: Annotated[Path, Opt(help="Budgets file (YAML or TOML).")],
    junit: Annotated[
        Path | None, Opt(help="Write JUnit XML here (one test case per budget).")
    ] = None,
    strict: Annotated[bool, Opt(help="Judge point estimates, not confidence intervals.")] = False,
    measure: Annotated[
        bool, Opt(help="Re-profile the run's artifacts on this machine first.")
    ] = False,
    confirm: Annotated[
        int,
        Opt(
            min=0,
            max=10,
            help="With --measure: a timing budget that is not a clear pass is measured again, "
            "up to N more times, and breaks when most measurements failed (0: judge one).",
        ),
    ] = 2,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Fail (exit 1) when a latency/accuracy/size budget is broken; exit 2 on bad input."""
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe.core.errors import BudgetError
        from kdpipe.core.runs import load_samples
        from kdpipe.report import gate as g

        limits = g.load_budgets(budgets)  # bad budgets fail before minutes of measuring
        given = g.given_metrics(report) if measure else {}
        latest: dict[str, dict] = {}  # the last measurement's report, for the drift notes

        def measured() -> tuple[dict, dict[str, list[float]]]:
            if measure:
                from kdpipe import api
                from kdpipe.core.config import build_config

                api.run(build_config(load_run_config(report.parent), {}), force=["profile"])
            latest["report"] = g.load_report(report)
            return latest["report"], load_samples(report.parent)

        def retrying(unsettled: list[str], n: int) -> None:
            ui.warn(
                f"{', '.join(unsettled)}: not settled by {n} measurement{'s' * (n > 1)}; "
                f"measuring again ({n} of {confirm})"
            )

        verdicts = g.judge_confirmed(measured, limits, strict, confirm if measure else 0, retrying)
        table = Table(
            Column("metric", overflow="fold"),
            "value",
            "95% CI",
            "budget",
            "margin",
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
            table.add_row(v.metric, f"{v.value:.4g}", ci, g.budget_text(v), g.margin(v), verdict)
        stdout.print(table)
        if measure:
            for note in g.drift_notes(given, latest["report"]["metrics"], verdicts):
                stdout.print(f"note: {note}", soft_wrap=True)
        if junit:
            g.write_junit(verdicts, junit)
        g.append_github_summary(verdicts)
        broken = [v for v in verdicts if not v.passed]
        if broken:
            raise BudgetError(
                f"{len(broken)} of {len(verdicts)} budgets broken: {', '.join(v.metric for v in broken)}",
                "see the table above",
            )
        stdout.print(f"all {len(verdicts)} budgets hold")


def compare(
    base: Annotated[Path, typer.Argument(help="Baseline report.json (e.g. from main).")],
    new: Annotated[Path, typer.Argument(help="New report.json.")],
    fail_on: Annotated[
        str | None, Opt(help="Regression rules, e.g. latency:+10%,accuracy:-0.5")
    ] = None,
    strict: Annotated[
        bool, Opt(help="Judge latency changes on point estimates, not confidence intervals.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Every shared metric of two reports with its change; exit 1 when a --fail-on rule breaks.

    Latency rules are judged on the 95 % interval of the change where both runs kept their samples (profile/samples.json beside report.json)."""  # noqa: E501
    with errors_reported(debug):
        from kdpipe.core.errors import BudgetError
        from kdpipe.core.runs import load_samples
        from kdpipe.report.compare import Side, machine_difference, parse_rules
        from kdpipe.report.compare import compare as diff
        from kdpipe.report.gate import load_report

        rules = parse_rules(fail_on or "")
        sides, machines = [], []
        for path in (base, new):
            samples = load_samples(path.parent)
            if not samples and not strict and any(r.category == "latency" for r in rules):
                ui.info(
                    f"compare: {path} has no profile/samples.json beside it; its latencies "
                    "are compared as point estimates"
                )
            report = load_report(path)
            sides.append(Side.of(report, samples))
            machines.append(report.get("environment") or {})
        elsewhere = machine_difference(*machines)
        if elsewhere:
            ui.warn(elsewhere)
        changes = diff(sides[0], sides[1], rules, strict)
        table = Table(
            Column("metric", overflow="fold"),
            "base",
            "new",
            "change",
            "%",
            "95 % CI of %",
            "rule",
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
        stdout.print(table)
        broken = [c for c in changes if c.broken_by]
        if broken:
            raise BudgetError(
                f"{len(broken)} metrics regressed past --fail-on", "see the table above"
            )
