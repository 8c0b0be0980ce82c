"""`kdpipe gate` and `kdpipe compare` on crafted reports: every outcome and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from tests.e2e.helpers import run_here as kdpipe

STUDENT = "student.ort-cpu.int8.bs1"
TEACHER = "teacher.torch-cpu.fp32.bs1"


def crafted_run(
    folder: Path, student_ms: float = 4.0, accuracy: float = 0.97, spread: float = 0.3
) -> Path:
    """A run folder with report.json (metrics + speedup basis) and profile/samples.json."""
    rng = np.random.default_rng(1)
    samples = {
        STUDENT: list(rng.normal(student_ms, spread, 300).clip(0.1)),
        TEACHER: list(rng.normal(20.0, 1.0, 300).clip(0.1)),
    }
    metrics = {"student.accuracy": accuracy, "summary.accuracy_retention": accuracy / 0.98}
    for key, ms in samples.items():
        for stat, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99)):
            metrics[f"{key}.{stat}"] = float(np.percentile(ms, q))
    speedup = metrics[f"{TEACHER}.p50_ms"] / metrics[f"{STUDENT}.p50_ms"]
    metrics["summary.speedup_vs_teacher"] = speedup
    report = {
        "schema_version": "1.0",
        "metrics": metrics,
        "summary": {
            "speedup_vs_teacher": speedup,
            "speedup_basis": {
                "batch_size": 1,
                "teacher": {"backend": "torch-cpu", "precision": "fp32"},
                "student": {"backend": "ort-cpu", "precision": "int8"},
            },
        },
    }
    (folder / "profile").mkdir(parents=True, exist_ok=True)
    (folder / "profile" / "samples.json").write_text(json.dumps(samples))
    (folder / "report.json").write_text(json.dumps(report))
    return folder / "report.json"


def budgets(folder: Path, text: str, name: str = "budgets.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_all_budgets_hold(tmp_path: Path) -> None:
    report = crafted_run(tmp_path)
    b = budgets(
        tmp_path,
        f"budgets:\n  {STUDENT}.p95_ms: {{max: 6}}\n  summary.speedup_vs_teacher: {{min: 3}}\n"
        "  summary.accuracy_retention: {min: 0.98}\n",
    )
    proc = kdpipe("gate", str(report), "--budgets", str(b))
    assert proc.returncode == 0, proc.stderr
    assert "all 3 budgets hold" in proc.stdout


def test_broken_budget_exits_1_with_a_table_and_junit(tmp_path: Path) -> None:
    report = crafted_run(tmp_path)
    b = budgets(
        tmp_path,
        f'[budgets]\n"{STUDENT}.p95_ms" = {{max = 3}}\n"student.accuracy" = {{min = 0.9}}\n',
        "budgets.toml",
    )
    junit = tmp_path / "gate.xml"
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    proc = kdpipe("gate", str(report), "--budgets", str(b), "--junit", str(junit), env=env)
    assert proc.returncode == 1, proc.stderr
    assert "FAIL" in proc.stdout and "above max 3" in proc.stdout
    assert proc.stderr.startswith("error: 1 of 2 budgets broken")
    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases[f"{STUDENT}.p95_ms"].find("failure") is not None
    assert cases["student.accuracy"].find("failure") is None
    text = summary.read_text()
    assert (
        text.startswith("earlier step\n")
        and "kdpipe gate: FAILED" in text
        and "student.accuracy" in text
    )


def test_a_junit_path_the_system_refuses_is_one_line(tmp_path: Path) -> None:
    # A folder, or a folder that takes no files: "internal error: IsADirectoryError ... '/x' ->
    # '/x'" and a FileNotFoundError naming kdpipe's temporary file.
    report = crafted_run(tmp_path)
    b = budgets(tmp_path, "budgets:\n  student.accuracy: {min: 0.5}\n")
    for junit, why in ((tmp_path, "Is a directory"), (Path("/proc/gate.xml"), "No such file")):
        proc = kdpipe("gate", str(report), "--budgets", str(b), "--junit", str(junit))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith(f"error: cannot use {junit}: {why}"), proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr


def test_noise_inside_the_interval_passes_unless_strict(tmp_path: Path) -> None:
    report = crafted_run(tmp_path, spread=1.0)
    value = json.loads(report.read_text())["metrics"][f"{STUDENT}.p95_ms"]
    b = budgets(
        tmp_path, f"{STUDENT}.p95_ms: {{max: {value * 0.99}}}\n"
    )  # 1 % under the point estimate
    assert kdpipe("gate", str(report), "--budgets", str(b)).returncode == 0
    assert kdpipe("gate", str(report), "--budgets", str(b), "--strict").returncode == 1
    far = budgets(tmp_path, f"{STUDENT}.p95_ms: {{max: {value * 0.7}}}\n", "far.yaml")
    assert kdpipe("gate", str(report), "--budgets", str(far)).returncode == 1


# Ten short lines that expand to 10^10 values (each list names the one before it ten times).
LAUGHS = "l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 10)
)


@pytest.mark.parametrize(
    "text,expected",
    [
        (f"{STUDENT}.p59_ms: {{max: 5}}\n", f"closest valid: {STUDENT}.p99_ms"),
        ("summary.speedup: {min: 2}\n", "unknown metric 'summary.speedup'"),
        (f"{STUDENT}.p95_ms: 5\n", "must be a mapping with numeric min and/or max"),
        (f"{STUDENT}.p95_ms: {{below: 5}}\n", "must be a mapping"),
        (f"{STUDENT}.p95_ms: {{max: fast}}\n", "must be a mapping"),
        ("budgets: [1, 2\n", "is not valid"),
        ("# nothing\n", "holds no budgets"),
        (LAUGHS + f"{STUDENT}.p95_ms: *l9\n", "expands to more than 100000 values"),
        ("budgets: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ],
)
def test_bad_budgets_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    report = crafted_run(tmp_path)
    proc = kdpipe("gate", str(report), "--budgets", str(budgets(tmp_path, text)))
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_or_corrupt_report_exits_2(tmp_path: Path) -> None:
    b = budgets(tmp_path, "student.accuracy: {min: 0.5}\n")
    proc = kdpipe("gate", str(tmp_path / "none.json"), "--budgets", str(b))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"metrics": [1,')
    proc = kdpipe("gate", str(bad), "--budgets", str(b))
    assert proc.returncode == 2 and "corrupt" in proc.stderr
    # Parts gate reads beside the metrics, damaged: named in one line (KeyError / ValueError
    # from deep inside the bootstrap before); a report without them is judged without intervals.
    whole = json.loads(crafted_run(tmp_path / "whole").read_text())
    speed = budgets(tmp_path, "summary.speedup_vs_teacher: {min: 1.5}\n", "speed.yaml")
    bad.write_text(json.dumps({"metrics": whole["metrics"]}))
    proc = kdpipe("gate", str(bad), "--budgets", str(speed))
    assert proc.returncode == 0 and "all 1 budgets hold" in proc.stdout, proc.stderr
    bad.write_text(json.dumps({**whole, "profile_settings": {"round": {"timed_calls": "x"}}}))
    proc = kdpipe("gate", str(bad), "--budgets", str(speed))
    assert proc.returncode == 2 and "profile_settings.round.timed_calls:" in proc.stderr
    bad.write_text('{"metrics": ' + "[" * 100_000 + "]" * 100_000 + "}")
    proc = kdpipe("gate", str(bad), "--budgets", str(b))
    assert proc.returncode == 2 and "corrupt or too old (it is nested too deeply)" in proc.stderr


def test_a_nan_or_non_numeric_metric_never_passes(tmp_path: Path) -> None:
    from kdpipe.report.compare import Side, compare, parse_rules
    from kdpipe.report.gate import judge

    # NaN compares False with everything: `value < min` did not hold, so the budget passed.
    report = {"metrics": {"student.accuracy": float("nan"), f"{STUDENT}.p95_ms": 3.0}}
    samples = {STUDENT: [float("nan")] * 20}  # the interval from NaN samples is NaN too
    budget = {"student.accuracy": {"min": 0.5}, f"{STUDENT}.p95_ms": {"max": 5.0}}
    verdicts = judge(report, budget, samples, strict=False)
    assert [(v.passed, v.reason) for v in verdicts] == [(False, "value is NaN")] * 2
    base = Side({"student.accuracy": 0.97}, {}, 5)
    lost = Side({"student.accuracy": float("nan")}, {}, 5)
    (change,) = compare(base, lost, parse_rules("accuracy:-0.5"))
    assert change.broken_by == "accuracy:-0.5"
    (change,) = compare(base, base, parse_rules("accuracy:-0.5"))
    assert change.broken_by == ""
    # The CLI: a report saying NaN fails the gate (exit 1); one holding a string is corrupt.
    run = crafted_run(tmp_path)
    report = json.loads(run.read_text())
    report["metrics"]["student.accuracy"] = float("nan")
    run.write_text(json.dumps(report))
    b = budgets(tmp_path, "student.accuracy: {min: 0.5}\n")
    proc = kdpipe("gate", str(run), "--budgets", str(b))
    assert proc.returncode == 1 and "value is NaN" in proc.stdout, proc.stdout + proc.stderr
    report["metrics"]["student.accuracy"] = "high"
    run.write_text(json.dumps(report))
    proc = kdpipe("gate", str(run), "--budgets", str(b))
    assert proc.returncode == 2, proc.stderr
    assert "metric 'student.accuracy' is 'high', not a number" in proc.stderr


def test_compare_flags_regressions(tmp_path: Path) -> None:
    base = crafted_run(tmp_path / "base", student_ms=4.0, accuracy=0.97)
    same = crafted_run(tmp_path / "same", student_ms=4.1, accuracy=0.968)
    slow = crafted_run(tmp_path / "slow", student_ms=5.0, accuracy=0.95)
    rules = "latency:+10%,accuracy:-0.5"
    ok = kdpipe("compare", str(base), str(same), "--fail-on", rules)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = kdpipe("compare", str(base), str(slow), "--fail-on", rules)
    assert bad.returncode == 1 and "latency:+10%" in bad.stdout and "accuracy:-0.5" in bad.stdout
    typo = kdpipe("compare", str(base), str(slow), "--fail-on", "latncy:+10%")
    assert typo.returncode == 2 and "did you mean: latency" in typo.stderr


def test_compare_judges_latency_on_the_interval_of_the_change(tmp_path: Path) -> None:
    """p95 13.6 % slower as a point, but its 95 % interval reaches below +10 %: noise on the
    tail, not a regression the rule can be sure of; --strict (or no samples) judges the point."""
    from kdpipe.core.runs import load_samples
    from kdpipe.report.compare import Side, compare, parse_rules
    from kdpipe.report.gate import load_report

    base = crafted_run(tmp_path / "base", student_ms=4.0)
    new = crafted_run(tmp_path / "new", student_ms=4.6)
    sides = [Side.of(load_report(p), load_samples(p.parent)) for p in (base, new)]
    rules = parse_rules("latency:+10%")
    rows = {c.metric: c for c in compare(sides[0], sides[1], rules)}
    p95, p50 = rows[f"{STUDENT}.p95_ms"], rows[f"{STUDENT}.p50_ms"]
    assert p95.percent is not None and p95.percent > 10 and p95.percent_interval is not None
    assert p95.percent_interval[0] < 10 < p95.percent_interval[1] and not p95.broken_by
    assert p50.percent_interval is not None and p50.percent_interval[0] > 10 and p50.broken_by
    strict = {c.metric: c for c in compare(sides[0], sides[1], rules, strict=True)}
    assert (
        strict[f"{STUDENT}.p95_ms"].broken_by
        and strict[f"{STUDENT}.p95_ms"].percent_interval is None
    )
    # absolute rules use the interval of the difference, in the metric's unit (ms)
    ms = {c.metric: c for c in compare(sides[0], sides[1], parse_rules("latency:+0.5"))}
    lo, hi = ms[f"{STUDENT}.p50_ms"].delta_interval or (0, 0)
    assert 0.5 < lo < hi and ms[f"{STUDENT}.p50_ms"].broken_by
    # reports measured on different machines are compared with a warning naming what differs
    from kdpipe.report.compare import machine_difference

    zen3 = {"cpu": "AMD EPYC", "cpu_id": "AuthenticAMD family 25 model 1", "threads": 2}
    zen4 = {**zen3, "cpu_id": "AuthenticAMD family 25 model 17"}
    assert machine_difference(zen3, dict(zen3)) == ""
    assert "cpu_id AuthenticAMD family 25 model 1 vs AuthenticAMD family 25 model 17" in (
        machine_difference(zen3, zen4)
    )
    assert machine_difference({"cpu": "x"}, {"cpu": "x", "cpu_id": "y"}) == ""  # older report
    for path, env in ((base, zen3), (new, zen4)):
        report = json.loads(path.read_text())
        path.write_text(json.dumps({**report, "environment": env}))
    proc = kdpipe("compare", str(base), str(new))
    assert proc.returncode == 0 and "measured on different machines" in proc.stderr
    # without samples the CLI says so and falls back to the points
    (new.parent / "profile" / "samples.json").unlink()
    proc = kdpipe("compare", str(base), str(new), "--fail-on", "latency:+10%")
    said = " ".join(proc.stderr.split())  # rich wraps lines where the path length says
    assert proc.returncode == 1 and "compared as point estimates" in said


def _measurements(tmp_path: Path, student_ms: list[float], accuracy: float = 0.97):
    """A measure() callable that returns crafted runs in turn, and the list of calls made."""
    runs = [crafted_run(tmp_path / f"m{i}", ms, accuracy) for i, ms in enumerate(student_ms)]
    calls: list[int] = []

    def measure() -> tuple[dict, dict]:
        path = runs[len(calls)]
        calls.append(1)
        samples = json.loads((path.parent / "profile" / "samples.json").read_text())
        return json.loads(path.read_text()), samples

    return measure, calls


def test_confirm_passes_a_slow_spell_and_fails_a_real_regression(tmp_path: Path) -> None:
    from kdpipe.report.gate import judge_confirmed

    key = f"{STUDENT}.p95_ms"
    limits = {key: {"max": 5.0}}
    # One slow measurement (p95 ~6.5 ms), then normal ones (~4.5 ms): the majority passes.
    measure, calls = _measurements(tmp_path / "spell", [6.0, 4.0, 4.0])
    retries: list[tuple[list[str], int]] = []
    (v,) = judge_confirmed(measure, limits, False, 2, lambda m, n: retries.append((m, n)))
    assert v.passed and len(calls) == 3 and v.value < 5.0
    assert retries == [([key], 1), ([key], 2)]
    # Slow every time: breaks as soon as two of three failed, and says so.
    measure, calls = _measurements(tmp_path / "regression", [6.0, 6.2, 6.1])
    (v,) = judge_confirmed(measure, limits, False, 2)
    assert not v.passed and len(calls) == 2
    assert v.reason == "interval above max 5 (in 2 of 2 measurements)"
    # One lucky fast measurement between two slow ones does not pass it.
    measure, calls = _measurements(tmp_path / "lucky", [6.0, 4.0, 6.1])
    (v,) = judge_confirmed(measure, limits, False, 2)
    assert not v.passed and len(calls) == 3 and v.value > 5.0
    assert v.reason == "interval above max 5 (in 2 of 3 measurements)"
    # --confirm 0: the first measurement decides.
    measure, calls = _measurements(tmp_path / "once", [6.0, 4.0])
    (v,) = judge_confirmed(measure, limits, False, 0)
    assert not v.passed and len(calls) == 1 and "measurements" not in v.reason


def test_a_pass_by_the_benefit_of_the_doubt_is_measured_again(tmp_path: Path) -> None:
    """A budget inside the first measurement's interval passes that measurement, but is not
    settled by it: when the next two break the budget, it breaks."""
    from kdpipe.report.gate import judge_confirmed

    measure, calls = _measurements(tmp_path / "edge", [4.0, 6.0, 6.0])
    first = json.loads(crafted_run(tmp_path / "probe", 4.0).read_text())["metrics"]
    key = f"{STUDENT}.p95_ms"
    limits = {key: {"max": first[key]}}  # the point estimate: inside its own interval
    (v,) = judge_confirmed(measure, limits, False, 2)
    assert not v.passed and len(calls) == 3 and "in 2 of 3 measurements" in v.reason
    # --strict has no interval: a value within the budget is a clear pass at once.
    measure, calls = _measurements(tmp_path / "strict", [4.0, 6.0, 6.0])
    (v,) = judge_confirmed(measure, limits, True, 2)
    assert v.passed and len(calls) == 1


def test_confirm_does_not_re_measure_accuracy_or_size(tmp_path: Path) -> None:
    from kdpipe.report.gate import judge_confirmed

    measure, calls = _measurements(tmp_path, [4.0, 4.0, 4.0], accuracy=0.90)
    limits = {"student.accuracy": {"min": 0.95}, f"{STUDENT}.p95_ms": {"max": 5.0}}
    acc, lat = judge_confirmed(measure, limits, False, 2)
    assert not acc.passed and acc.reason == "value below min 0.95"
    assert lat.passed and len(calls) == 1


def test_drift_notes_tell_a_slower_machine_from_a_slower_student() -> None:
    from kdpipe.report.gate import Verdict, drift_notes

    key, ref = "student.ort-cpu.int8.bs1.p95_ms", "teacher.ort-cpu.int8.bs1.p95_ms"
    broken = [Verdict(key, 6.0, 5.8, 6.3, None, 5.0, False, "interval above max 5")]
    before = {key: 4.0, ref: 20.0, "teacher.torch-cpu.fp32.bs1.p95_ms": 30.0}
    # Teacher 30 % slower as well: the machine.
    (note,) = drift_notes(before, {**before, key: 6.0, ref: 26.0}, broken)
    assert "moved +50%" in note and f"{ref} 20 -> 26 ms (+30%)" in note
    assert "machine is slower now" in note
    # Teacher as before: the student.
    (note,) = drift_notes(before, {**before, key: 6.0, ref: 20.4}, broken)
    assert "held steady" in note and "(+2%)" in note and "student itself is slower" in note
    # No teacher on that backend: the torch-cpu teacher at the same batch size stands in.
    only_torch = {k: v for k, v in before.items() if k != ref}
    (note,) = drift_notes(only_torch, {**only_torch, key: 6.0}, broken)
    assert "teacher.torch-cpu.fp32.bs1.p95_ms 30 -> 30 ms" in note
    # Teacher steady and the student no slower than in the report: it is the budget.
    faster = [Verdict(key, 3.6, 3.5, 3.7, None, 3.0, False, "interval above max 3")]
    (note,) = drift_notes(before, {**before, key: 3.6, ref: 19.0}, faster)
    assert "4 -> 3.6 ms (-10%)" in note and "student did not get slower" in note
    assert "student itself is slower" not in note
    # The teacher got faster while the student got slower: no reading is offered; passing
    # budgets, sizes and budgets without a reading before --measure get no note either.
    assert drift_notes(before, {**before, key: 6.0, ref: 15.0}, broken) == []
    passed = [Verdict(key, 4.0, 3.9, 4.1, None, 5.0, True, "")]
    assert drift_notes(before, {**before, ref: 26.0}, passed) == []
    size = [Verdict("student.size_bytes", 9.0, None, None, None, 5.0, False, "value above")]
    assert drift_notes(before, before, size) == []
    assert drift_notes({}, {**before, key: 6.0}, broken) == []


def test_intervals_resample_whole_rounds_so_a_slow_spell_widens_them() -> None:
    from kdpipe.report.gate import confidence_interval, round_length

    # 40 rounds of 20 calls; the machine's speed changes from round to round (slow spells),
    # and calls within a round scatter a little around their round's level.
    rng = np.random.default_rng(3)
    levels = rng.choice([4.0, 4.0, 4.0, 5.0], size=40)
    ms = list((levels[:, None] + rng.normal(0, 0.05, (40, 20))).ravel())
    key = f"{STUDENT}.p50_ms"
    rounds = {"profile_settings": {"round": {"rewarm_calls": 5, "timed_calls": 20}}}
    calls = {"profile_settings": {"round": {"timed_calls": 1}}}  # as if calls were independent
    assert round_length(rounds) == 20 and round_length({}) == 5  # older reports: rounds of 5
    by_round = confidence_interval(key, rounds, {STUDENT: ms})
    by_call = confidence_interval(key, calls, {STUDENT: ms})
    assert by_round and by_call
    # Resampling single calls treats 800 correlated calls as independent: too narrow.
    assert by_round[1] - by_round[0] > 1.5 * (by_call[1] - by_call[0])
    assert by_round[0] <= float(np.median(ms)) <= by_round[1]
    # Independent calls: both read about the same.
    flat = list(rng.normal(4.0, 0.3, 800))
    w_round = np.subtract(*confidence_interval(key, rounds, {STUDENT: flat})[::-1])
    w_call = np.subtract(*confidence_interval(key, calls, {STUDENT: flat})[::-1])
    assert 0.6 < w_round / w_call < 1.6
