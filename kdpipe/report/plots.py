"""The report's plots (matplotlib, headless), each returned as an inline base64 PNG."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")  # no display: render to memory
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plain_log_ticks(axis) -> None:  # noqa: ANN001 (a matplotlib Axis)
    """'2' and '0.5' rather than '2x10^0' on a log axis; call once the data is plotted.

    Under a decade every minor tick gets a label; across decades only 2x and 5x do, so the
    axis stays readable without crowding.
    """
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    axis.set_major_formatter(plain)
    lo, hi = sorted(axis.get_view_interval())
    if lo > 0 and hi / lo < 10:
        axis.set_minor_formatter(plain)
    else:
        axis.set_minor_formatter(
            FuncFormatter(lambda v, _pos: f"{v:g}" if f"{v:.0e}"[0] in "25" else "")
        )


def _label(row: dict) -> str:
    # "$" escaped: matplotlib reads text between two of them as TeX (a file named
    # "$\x$.onnx" made savefig fail).
    return f"{row['model']} {row['backend']} {row['precision']}".replace("$", r"\$")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower latency and higher accuracy."""
    front = []
    for i, (lat, acc) in enumerate(points):
        dominated = any(
            (lat2 <= lat and acc2 >= acc) and (lat2 < lat or acc2 > acc)
            for j, (lat2, acc2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def accuracy_vs_latency_figure(report: dict) -> plt.Figure:
    bs = min(e["batch_size"] for e in report["latency"])
    p50 = {_label(e): e["p50_ms"] for e in report["latency"] if e["batch_size"] == bs}
    rows = [r for r in report["models"] if _label(r) in p50]
    points = [(p50[_label(r)], 100 * r["accuracy"]) for r in rows]
    front = pareto_front(points)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    # Names go in a legend beside the axes, one colour per point: the student's backends sit
    # within a fraction of a percent and a millisecond of each other, and text beside the
    # points would overprint.
    colours = plt.get_cmap("tab10")
    for i, (r, (lat, acc)) in enumerate(zip(rows, points, strict=True)):
        ax.scatter(
            lat,
            acc,
            s=60,
            color=colours(i % 10),
            marker="o" if r["model"] == "student" else "s",
            label=_label(r) + (" *" if i in front else ""),
            zorder=3,
        )
    if len(front) > 1:  # a single point is no front: no line, no legend entry
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "k--",
            lw=1,
            label="Pareto front (*)",
            zorder=2,
        )
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"p50 latency at batch {bs} (ms, log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Accuracy vs latency")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return fig


def accuracy_vs_latency(report: dict) -> str:
    return _png(accuracy_vs_latency_figure(report))


def latency_distributions(report: dict, samples: dict[str, list[float]]) -> str:
    bs = min(e["batch_size"] for e in report["latency"])
    keys = [k for k in samples if k.endswith(f".bs{bs}")]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(len(keys), 1)))
    if keys:
        ax.boxplot([samples[k] for k in keys], vert=False, showfliers=True, whis=(1, 99))
        ax.set_yticks(
            range(1, len(keys) + 1), [k.rsplit(".", 1)[0].replace(".", " ") for k in keys]
        )
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.set_xlabel(f"latency per call at batch {bs} (ms, log scale); whiskers p1-p99")
    ax.set_title("Latency distributions")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def latency_vs_batch(report: dict) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    series: dict[str, list[tuple[int, float]]] = {}
    for e in report["latency"]:
        series.setdefault(_label(e), []).append((e["batch_size"], e["p50_ms"]))
    for name, pts in series.items():
        pts.sort()
        ax.plot([b for b, _ in pts], [ms for _, ms in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_ticks(ax.xaxis)
    _plain_log_ticks(ax.yaxis)
    ax.set_xlabel("batch size")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title("Latency vs batch size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def training_curves(report: dict) -> str:
    history = report["student"].get("history") or []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    epochs = list(range(1, len(history) + 1))  # multi-stage methods restart their epoch count
    for key in sorted({k for h in history for k in h if k.startswith("loss_")}):
        ax1.plot(epochs, [h.get(key) for h in history], marker="o", label=key[5:])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss term (weighted)")
    ax1.set_title("Distillation losses")
    ax1.legend(fontsize=8)
    ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], marker="o", label="student")
    ax2.axhline(100 * report["teacher"]["accuracy"], color="gray", ls="--", label="teacher (test)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation top-1 (%)")
    ax2.set_title("Student accuracy")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    return _png(fig)
