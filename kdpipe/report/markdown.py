"""report.md: the report as Markdown, short enough for a pull-request comment."""

from __future__ import annotations

import html


def _text(value: object) -> str:
    """A name as Markdown text: on one line, no `|` that would split a table cell, no raw
    HTML (names come from users' folders and files, or from a report.json given to
    `kdpipe report`)."""
    one_line = " ".join(str(value).split())
    return html.escape(one_line, quote=False).replace("|", "\\|")


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def memory_text(m: dict) -> str:
    """Peak RSS growth (and GPU memory) at the largest batch, measured in a fresh process."""
    mem = m.get("memory") or {}
    if "peak_rss_over_baseline_bytes" not in mem:
        return mem.get("error", "-")
    text = f"{_mb(mem['peak_rss_over_baseline_bytes'])} RSS @bs{mem['batch_size']}"
    return text + (f", {_mb(mem['device_bytes'])} GPU" if "device_bytes" in mem else "")


def basis_text(basis: dict) -> str:
    """What the headline speedup compares: 'student ort-cpu int8 vs teacher ort-cpu fp32'."""
    st, t = basis["student"], basis["teacher"]
    return f"student {st['backend']} {st['precision']} vs teacher {t['backend']} {t['precision']}"


def export_rows(export: dict) -> list[tuple[str, dict, float]]:
    """(label, file entry, accuracy drop vs FP32) for every exported ONNX file, the TensorRT
    form of INT8 included."""
    fp32 = export["fp32"]["parity"]["accuracy"]
    rows = []
    for precision, x in export.items():
        rows.append((precision, x, x["accuracy_drop_vs_fp32"]))
        if "tensorrt_onnx" in x:
            trt = x["tensorrt_onnx"]
            rows.append((f"{precision} (for TensorRT)", trt, fp32 - trt["parity"]["accuracy"]))
    return rows


def _cpu_detail(env: dict) -> str:
    """' (AuthenticAMD family 25 model 17 stepping 1; avx2, avx512f, ...)' where recorded
    (older reports have neither field)."""
    parts = [env.get("cpu_id") or "", ", ".join(env.get("cpu_features") or [])]
    text = "; ".join(p for p in parts if p)
    return f" ({text})" if text else ""


def render_markdown(r: dict) -> str:
    sections = (
        _headline,
        _shipping,
        _layers,
        _models,
        _latency,
        _parity,
        _openvino,
        _notes,
        _environment,
    )
    return "\n".join(line for section in sections for line in section(r))


def _headline(r: dict) -> list[str]:
    s, t, st = r["summary"], r["teacher"], r["student"]
    basis = s["speedup_basis"]
    return [
        f"# kdpipe report: {_text(t['arch'])} -> {_text(st['arch'])} on {_text(r['data']['name'])}",
        "",
        f"Student keeps **{_pct(s['accuracy_retention'])}** of the teacher's accuracy and runs "
        f"**{s['speedup_vs_teacher']:.2f}x** faster at batch {basis['batch_size']} "
        f"({basis_text(basis)}, p50); "
        f"**{s['param_compression']:.1f}x** fewer parameters, **{s['size_compression']:.1f}x** smaller file.",
        "",
        "| | teacher | student |",
        "|---|---|---|",
        f"| architecture | {_text(t['arch'])} | {_text(st['arch'])} ({_text(st['method'])}) |",
        f"| test top-1 | {_pct(t['accuracy'])} | {_pct(st['accuracy'])} |",
        f"| parameters | {t['params']:,} | {st['params']:,} |",
        f"| FLOPs / image | {t['flops']:,} | {st['flops']:,} |",
        f"| weights file | {_mb(t['size_bytes'])} | {_mb(st['size_bytes'])} |",
    ]


def _shipping(r: dict) -> list[str]:
    """The form the bundle ships and the fastest allowed form at each batch size."""
    s = r["summary"]
    forms = s.get("fastest_forms") or []
    if not forms:
        return []
    lines = ["", "## Form to ship", ""]
    shipped = s.get("shipped")
    if shipped:
        lines += [
            f"bundle.json ships **{shipped['precision']} on {shipped['backend']}**: "
            f"{shipped['p50_ms']:.3f} ms p50 at batch {shipped['batch_size']}, top-1 "
            f"{_pct(shipped['accuracy'])}, the fastest CPU form within the allowed accuracy drop.",
            "",
        ]
    lines += ["| batch | fastest allowed form | p50 ms | top-1 |", "|---|---|---|---|"]
    for f in forms:
        lines.append(
            f"| {f['batch_size']} | {f['backend']} {f['precision']} | {f['p50_ms']:.3f} | "
            f"{_pct(f['accuracy'])} |"
        )
    return lines + [""] + [f"- {u}" for u in s.get("upsets") or []]


def _layers(r: dict) -> list[str]:
    """Where one call of the shipped form, and of each INT8 form, spends its time."""
    layers = r.get("layers") or {}
    shipped = r["summary"].get("shipped") or {}
    first = f"{shipped.get('backend')}.{shipped.get('precision')}"
    forms = [first] * (first in layers) + [k for k in layers if k.endswith(".int8") and k != first]
    lines = []
    for form in forms:
        backend, _, precision = form.partition(".")
        lines += [
            "",
            f"### Where a call goes: student {backend} {precision}"
            + (" (shipped)" if form == first else ""),
            "",
            "| operator | runs in | share of the call | ms (profiled) | nodes |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {row['op']} | {row['precision']} | {_pct(row['share'])} | {row['ms']:.3f} | "
            f"{row['nodes']} |"
            for row in layers[form]
        ]
    return lines


def _models(r: dict) -> list[str]:
    lines = [
        "",
        "## Models",
        "",
        "| model | backend | precision | top-1 | agrees with teacher | file | peak memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in r["models"]:
        lines.append(
            f"| {_text(m['model'])} | {m['backend']} | {m['precision']} | {_pct(m['accuracy'])} | "
            f"{_pct(m['agreement_with_teacher'])} | {_mb(m['size_bytes'])} | {memory_text(m)} |"
        )
    return lines


def _latency(r: dict) -> list[str]:
    lines = [
        "",
        "## Latency (ms per batch)",
        "",
        "| model | backend | precision | batch | p50 | p90 | p95 | p99 | mean ± std | images/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in r["latency"]:
        lines.append(
            f"| {_text(e['model'])} | {e['backend']} | {e['precision']} | {e['batch_size']} | "
            f"{e['p50_ms']:.3f} | {e['p90_ms']:.3f} | {e['p95_ms']:.3f} | {e['p99_ms']:.3f} | "
            f"{e['mean_ms']:.3f} ± {e['std_ms']:.3f} | {e['throughput']:.1f} |"
        )
    return lines


def _parity(r: dict) -> list[str]:
    lines = [
        "",
        "## Export parity (ONNX vs PyTorch, real test images)",
        "",
        "| precision | file | max abs Δlogit | top-1 agreement | top-1 | drop vs FP32 |",
        "|---|---|---|---|---|---|",
    ]
    for label, x, drop in export_rows(r["export"]):
        p = x["parity"]
        lines.append(
            f"| {label} | {_text(x['file'])} ({_mb(x['size_bytes'])}) | {p['max_abs_diff']:.2e} | "
            f"{_pct(p['top1_agreement'])} | {_pct(p['accuracy'])} | {100 * drop:+.2f} pt |"
        )
    guard = r["export"].get("int8", {}).get("quantization", {}).get("guard")
    if guard:
        kept = ", ".join(k["node"] for k in guard["kept_fp32"]) or "none"
        lines += [
            "",
            f"INT8 accuracy guard: all-INT8 dropped {100 * guard['drop_all_int8']:.2f} pt on the "
            f"validation split (limit {100 * guard['max_drop']:.2f} pt); layers kept in FP32: {kept}; "
            f"final drop {100 * guard['final_drop']:.2f} pt.",
        ]
    return lines


def _openvino(r: dict) -> list[str]:
    """Parity of each file as OpenVINO runs it, with the precision it computed in."""
    rows = [(p, x["openvino"]) for p, x in r["export"].items() if x.get("openvino")]
    if not rows:
        return []
    lines = [
        "",
        "OpenVINO runs the same files (float layers in the precision it picks for this CPU):",
        "",
        "| file | computed in | max abs Δlogit | top-1 agreement | top-1 |",
        "|---|---|---|---|---|",
    ]
    for precision, ov in rows:
        p = ov["parity"]
        lines.append(
            f"| {precision} | {ov['inference_precision']} | {p['max_abs_diff']:.2e} | "
            f"{_pct(p['top1_agreement'])} | {_pct(p['accuracy'])} |"
        )
    return lines


def _notes(r: dict) -> list[str]:
    """Backends not measured here, and the TensorRT engines (or why there are none)."""
    lines: list[str] = []
    if r.get("skipped_backends"):
        lines += ["", "Backends not measured on this machine:", ""]
        lines += [f"- {s['backend']}: {s['reason']}" for s in r["skipped_backends"]]
    trt = r.get("tensorrt") or {}
    if "skipped" in trt:
        lines += ["", f"TensorRT: skipped ({trt['skipped']})."]
    elif trt:
        engines = ", ".join(_engine_text(p, m) for p, m in trt.items())
        lines += ["", f"TensorRT engines: {engines}."]
    return lines


def _engine_text(precision: str, m: dict) -> str:
    text = f"{precision} ({m['plan']}, TensorRT {m['tensorrt_version']}, {m['gpu']}"
    if "parity" not in m:
        return text + ")"
    return (
        f"{text}; top-1 agreement with PyTorch {_pct(m['parity']['top1_agreement'])}, "
        f"max abs Δlogit {m['parity']['max_abs_diff']:.2e})"
    )


def _environment(r: dict) -> list[str]:
    env = r["environment"]
    times = ", ".join(
        f"{k} {v['seconds']:.1f}s{' (reused)' if v['reused'] else ''}"
        for k, v in r["stages"].items()
    )
    return [
        "",
        "## Environment",
        "",
        f"{env['cpu']}{_cpu_detail(env)}, {env['cores']} cores, {env['threads']} threads; "
        f"GPU: {env['gpu'] or 'none'}; "
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, kdpipe {env['kdpipe']}.",
        "",
        f"Stage times: {times}",
        "",
    ]
