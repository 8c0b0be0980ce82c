"""The flat `metrics` map of report.json: one dotted key per measured figure.

Keys (docs/report-schema.md):
    summary.<ratio>                                  accuracy_retention, speedup_vs_teacher, ...
    teacher.<fact> / student.<fact>                  accuracy, params, flops, size_bytes, ...
    <model>.<backend>.<precision>.bs<N>.<stat>       p50_ms, p95_ms, p99_ms, mean_ms, throughput, cv, ...
    <model>.<backend>.<precision>.<fact>             accuracy, agreement_with_teacher, size_bytes
    export.<precision>.<fact>                        top1_agreement, max_abs_diff, accuracy, accuracy_drop_vs_fp32
    export.<precision>.openvino.<fact>               top1_agreement, max_abs_diff, accuracy
    shipped.<fact>                                   p50_ms, accuracy, batch_size: the bundle's form
"""

from __future__ import annotations

LATENCY_STATS = (
    "min_ms",
    "mean_ms",
    "std_ms",
    "p50_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "cv",
    "throughput",
)
MODEL_FACTS = ("accuracy", "agreement_with_teacher", "params", "flops", "size_bytes")
SUMMARY = (
    "accuracy_retention",
    "accuracy_drop",
    "speedup_vs_teacher",
    "torch_speedup_vs_teacher",
    "ort_speedup_vs_teacher",
    "param_compression",
    "flops_compression",
    "size_compression",
)


def latency_key(e: dict) -> str:
    return f"{e['model']}.{e['backend']}.{e['precision']}.bs{e['batch_size']}"


def flatten_metrics(report: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for k in SUMMARY:
        if report["summary"].get(k) is not None:
            m[f"summary.{k}"] = float(report["summary"][k])
    for who in ("teacher", "student"):
        for k in MODEL_FACTS:
            if report[who].get(k) is not None:
                m[f"{who}.{k}"] = float(report[who][k])
    for row in report["models"]:
        prefix = f"{row['model']}.{row['backend']}.{row['precision']}"
        for k in ("accuracy", "agreement_with_teacher", "size_bytes"):
            m[f"{prefix}.{k}"] = float(row[k])
        mem = row.get("memory", {})
        for k in ("peak_rss_over_baseline_bytes", "device_bytes"):
            if k in mem:
                m[f"{prefix}.memory.{k}"] = float(mem[k])
    for e in report["latency"]:
        for k in LATENCY_STATS:
            m[f"{latency_key(e)}.{k}"] = float(e[k])
        for k, v in e.get("device", {}).items():  # GPU backends: CUDA-event device time
            m[f"{latency_key(e)}.device.{k}"] = float(v)
    m.update(_export_metrics(report.get("export", {})))
    shipped = report["summary"].get("shipped")
    for k in ("p50_ms", "accuracy", "batch_size"):
        if shipped:
            m[f"shipped.{k}"] = float(shipped[k])
    return m


def _export_metrics(export: dict) -> dict[str, float]:
    m: dict[str, float] = {}
    for precision, x in export.items():
        for where, parity in (
            ("", x["parity"]),
            (".openvino", (x.get("openvino") or {}).get("parity")),
        ):
            for k in ("top1_agreement", "max_abs_diff", "accuracy"):
                if parity:
                    m[f"export.{precision}{where}.{k}"] = float(parity[k])
        m[f"export.{precision}.accuracy_drop_vs_fp32"] = float(x["accuracy_drop_vs_fp32"])
        m[f"export.{precision}.size_bytes"] = float(x["size_bytes"])
    return m
