"""The report's accuracy-vs-latency plot: the Pareto front and a legend that names every point."""

from __future__ import annotations

import matplotlib.pyplot as plt

from kdpipe.report.plots import accuracy_vs_latency_figure, pareto_front


def _report(points: list[tuple[str, str, str, float, float]]) -> dict:
    return {
        "latency": [
            {"model": m, "backend": b, "precision": p, "batch_size": 1, "p50_ms": ms}
            for m, b, p, ms, _ in points
        ]
        + [{"model": "teacher", "backend": "x", "precision": "y", "batch_size": 8, "p50_ms": 0.1}],
        "models": [
            {"model": m, "backend": b, "precision": p, "accuracy": acc}
            for m, b, p, _, acc in points
        ],
    }


def test_pareto_front_by_hand() -> None:
    # (latency, accuracy): 1 is slower and worse than 0; 3 ties 2's accuracy but is slower.
    points = [(1.0, 0.90), (2.0, 0.85), (3.0, 0.95), (4.0, 0.95), (0.5, 0.80)]
    assert pareto_front(points) == [4, 0, 2]  # sorted by latency
    assert pareto_front([(1.0, 0.5)]) == [0]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points dominate neither


def test_close_points_are_named_in_a_legend_with_the_front_marked() -> None:
    # The student's backends within 0.1 ms and 0.1 %: text beside them would overprint.
    report = _report(
        [
            ("student", "onnxruntime", "int8", 1.50, 0.989),
            ("student", "onnxruntime", "fp32", 1.55, 0.989),
            ("student", "torch", "fp32", 1.60, 0.988),
            ("teacher", "onnxruntime", "fp32", 6.10, 0.986),
        ]
    )
    fig = accuracy_vs_latency_figure(report)
    try:
        ax = fig.axes[0]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert not ax.texts  # no annotations drawn on the axes
        assert legend == [
            "student onnxruntime int8 *",
            "student onnxruntime fp32",
            "student torch fp32",
            "teacher onnxruntime fp32",
        ]
        colours = {tuple(c.get_facecolor()[0]) for c in ax.collections}
        assert len(colours) == 4
        fig.canvas.draw()  # the 1.5-6.1 ms axis spans under a decade: plain labels, minor too
        ticks = [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
        assert "2" in ticks and not any("times" in t for t in ticks), ticks
    finally:
        plt.close(fig)


def test_a_front_of_two_draws_the_dashed_line() -> None:
    report = _report(
        [("student", "onnxruntime", "int8", 1.5, 0.95), ("teacher", "torch", "fp32", 6.0, 0.99)]
    )
    fig = accuracy_vs_latency_figure(report)
    try:
        ax = fig.axes[0]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend[-1] == "Pareto front (*)"
        (line,) = ax.get_lines()
        assert list(line.get_xdata()) == [1.5, 6.0]
    finally:
        plt.close(fig)
