"""`kdpipe profile`, `report`, `gate` and `compare`: measure models, render a run's report,
judge it against budgets, diff two reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdpipe.cli.errors import errors_reported
from kdpipe.cli.options import overrides_of, positive_sizes
from kdpipe.cli.shared import (
    BatchSizesOpt,
    DebugOpt,
    MemoryOpt,
    MinItersOpt,
    MinSecondsOpt,
    Opt,
    QuietOpt,
    ShipBatchOpt,
    ThreadsOpt,
    stdout,
)
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError


def profile(
    targets: Annotated[
        list[str], typer.Argument(help="Run dir, bundle dir, .onnx, .plan or ARCH:WEIGHTS.pt")
    ],
    batch_sizes: BatchSizesOpt = None,
    ship_batch: ShipBatchOpt = None,
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
    options = dict(locals())
    ui.set_quiet(quiet)
    with errors_reported(debug):
        from kdpipe.api import measure

        overrides = overrides_of(options, ("profile",))
        run_dirs = [t for t in targets if (Path(t) / "config.yaml").is_file()]
        # A run directory alone is re-profiled into its own report; among other targets it
        # stands for its models (stages/profile_files.run_dir_targets).
        if run_dirs and len(targets) == 1:
            if input_size is not None:
                raise ConfigError(
                    "--input-size does not apply to a run directory (its data fixes the size)",
                    "drop --input-size, or profile the run's ONNX file instead",
                )
            from kdpipe.report.terminal import print_summary

            print_summary(measure.profile_run_again(Path(run_dirs[0]), overrides, out), stdout)
            return
        from kdpipe.report.tables import profile_table

        chw = positive_sizes(input_size, "--input-size")
        stdout.print(profile_table(measure.profile_files(targets, overrides, chw, out)))
        if out:
            stdout.print(f"results: {out}")


def report(
    run_dir: Annotated[Path, typer.Argument(help="A kdpipe run directory.")],
    debug: DebugOpt = False,
) -> None:
    """Rebuild report.md and report.html from the run's report.json."""
    with errors_reported(debug):
        from kdpipe.api import measure

        measure.rebuild_report(run_dir)
        stdout.print(f"report: {run_dir / 'report.md'}  {run_dir / 'report.html'}")


def gate(
    report: Annotated[Path, typer.Argument(help="report.json of a kdpipe run.")],
    budgets: Annotated[Path, Opt(help="Budgets file (YAML or TOML).")],
    junit: Annotated[
        Path | None, Opt(help="Write JUnit XML here (one test case per budget).")
    ] = None,
    strict: Annotated[bool, Opt(help="Judge point estimates, not confidence intervals.")] = False,
    measure_again: Annotated[
        bool,
        Opt("--measure/--no-measure", help="Re-profile the run's artifacts on this machine first."),
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
        from kdpipe.api import measure
        from kdpipe.report import gate as g
        from kdpipe.report.tables import gate_table

        outcome = measure.gate(report, budgets, strict, measure_again, confirm)
        stdout.print(gate_table(outcome.verdicts))
        for note in outcome.notes:
            stdout.print(f"note: {note}", soft_wrap=True)
        if junit:
            g.write_junit(outcome.verdicts, junit)
        g.append_github_summary(outcome.verdicts)
        outcome.raise_if_broken()
        stdout.print(f"all {len(outcome.verdicts)} budgets hold")


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
        from kdpipe.api import measure
        from kdpipe.core.errors import BudgetError
        from kdpipe.report.tables import compare_table

        changes = measure.compare(base, new, fail_on or "", strict)
        stdout.print(compare_table(changes))
        broken = [c for c in changes if c.broken_by]
        if broken:
            raise BudgetError(
                f"{len(broken)} metrics regressed past --fail-on", "see the table above"
            )
