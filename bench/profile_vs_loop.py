"""`kdpipe profile`'s absolute figures against independent plain loops of each runtime.

    python bench/profile_vs_loop.py [--archs resnet18,resnet50,mobilenet_v3_large]
                                    [--image-size 224] [--seconds 3]

Exports random-weight torchvision models at the size asked (`kdpipe export`, FP32 and INT8),
profiles every file on onnxruntime and OpenVINO in one `kdpipe profile` (batch 1), then times
each (file, runtime) again in a plain loop of its own in a fresh process: onnxruntime with its
default session options, OpenVINO with the latency hint, both on the same thread count. The
table gives both p50s and their ratio (kdpipe's alone pass against the loop; the interleaved
pass beside), and for each model the fastest form each method finds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from runtimes import _export, _openvino, _ort, _p50  # bench/runtimes.py

RUNTIMES = {"ort-cpu": "onnxruntime", "ov-cpu": "openvino"}


def _loop(path: Path, runtime: str, size: int, threads: int, seconds: float) -> float:
    """The p50 of one (file, runtime) in a plain loop, in a process of its own."""
    code = (
        "import sys, numpy as np; sys.path.insert(0, 'bench'); from profile_vs_loop import _here;"
        f"print(_here({str(path)!r}, {runtime!r}, {size}, {threads}, {seconds}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def _here(path: str, runtime: str, size: int, threads: int, seconds: float) -> float:
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    make = _ort if runtime == "ort-cpu" else lambda p, x, t: _openvino(p, x, t, False)
    return _p50(make(Path(path), x, threads), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet18,resnet50,mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = {a: _export(a, args.image_size, Path(tmp)) for a in args.archs.split(",")}
        results = Path(tmp) / "profile.json"
        targets = [str(p) for forms in files.values() for p in forms.values()]
        cmd = [sys.executable, "-m", "kdpipe", "profile", *targets, "--batch-sizes", "1"]
        cmd += ["--threads", str(args.threads), "--min-seconds", str(args.seconds)]
        cmd += ["--no-memory", "--quiet", "--out", str(results)]
        subprocess.run(cmd, check=True)
        profile = json.loads(results.read_text())
        loops = {
            (arch, precision, backend): _loop(
                path, backend, args.image_size, args.threads, args.seconds
            )
            for arch, forms in files.items()
            for precision, path in forms.items()
            for backend in RUNTIMES
        }
    _print(profile, loops, args)


def _print(profile: dict, loops: dict, args: argparse.Namespace) -> None:
    env = profile["environment"]
    print(
        f"{env['cpu']} ({', '.join(env.get('cpu_features') or [])}), {args.threads} threads, "
        f"batch 1, {args.image_size} px; p50 ms"
    )
    print(
        "| model | file | runtime (as run) | kdpipe alone | kdpipe interleaved | plain loop | alone / loop |"
    )
    print("|---|---|---|---|---|---|---|")
    fastest: dict[str, dict[str, tuple[float, str]]] = {}
    for e in profile["latency"]:
        arch = e["model"].split("/")[0]
        file = "int8" if e["precision"] == "int8" else "fp32"
        loop = loops[(arch, file, e["backend"])]
        form = f"{e['backend']} {e['precision']}"
        print(
            f"| {arch} | {file} | {form} | {e['p50_ms']:.2f} | {e['interleaved']['p50_ms']:.2f} | "
            f"{loop:.2f} | {e['p50_ms'] / loop:.3f} |"
        )
        best = fastest.setdefault(arch, {})
        for method, ms in (("kdpipe", e["interleaved"]["p50_ms"]), ("loops", loop)):
            if method not in best or ms < best[method][0]:
                best[method] = (ms, form)
    for arch, best in fastest.items():
        k_form, l_form = best["kdpipe"][1], best["loops"][1]
        print(f"{arch}: fastest by kdpipe {k_form}, by plain loops {l_form}")


if __name__ == "__main__":
    main()
