"""Memory per backend, each measured in a fresh subprocess so backends don't pollute each other.

The child imports its runtime, notes its peak RSS (the baseline), loads the model, runs a
batch a few times, and reports the peak RSS growth over that baseline; on CUDA it also
reports `torch.cuda.max_memory_allocated`, for TensorRT the engine's device memory.

    python -m kdpipe.profile.memory '{"kind": "ort", "path": "m.onnx", "shape": [1, 3, 32, 32]}'
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _peak_rss_bytes() -> int:
    """This process image's peak RSS. /proc's VmHWM starts afresh at exec; getrusage's
    ru_maxrss would carry over the (large) peak of the parent that forked us."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def probe(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs inside the child process."""
    import numpy as np

    shape = tuple(spec["shape"])
    result: dict[str, Any] = {}
    if spec["kind"] == "ov":
        baseline = _peak_rss_bytes()
        _ov_calls(spec, shape)
    elif spec["kind"] == "ort":
        import onnxruntime as ort

        from kdpipe.runtimes.ort_input import read_input

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = spec.get("threads", 1)
        images = np.random.default_rng(0).standard_normal(shape)
        baseline = _peak_rss_bytes()
        session = ort.InferenceSession(
            spec["path"], opts, providers=[spec.get("provider", "CPUExecutionProvider")]
        )
        wants = read_input(session, spec["path"])
        feed = {wants.name: wants.array(images)}
        for _ in range(5):
            session.run(None, feed)
    else:
        import torch

        from kdpipe.models import create

        torch.set_num_threads(spec.get("threads", 1))
        device = spec.get("device", "cpu")
        batch = torch.randn(shape)
        baseline = _peak_rss_bytes()
        if spec["kind"] == "tensorrt":
            from kdpipe.runtimes.tensorrt import TensorRTRunner

            runner = TensorRTRunner(Path(spec["path"]))
            result["device_bytes"] = runner.device_memory_bytes
            for _ in range(5):
                runner(batch.cuda())
        else:
            model = create(spec["arch"], spec["num_classes"], spec["weights"]).eval().to(device)
            with torch.inference_mode():
                for _ in range(5):
                    model(batch.to(device))
            if device == "cuda":
                result["device_bytes"] = int(torch.cuda.max_memory_allocated())
    result["peak_rss_over_baseline_bytes"] = max(_peak_rss_bytes() - baseline, 0)
    return result


def _ov_calls(spec: dict[str, Any], shape: tuple[int, ...]) -> None:
    import numpy as np

    from kdpipe.runtimes.openvino import compile_file

    images = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    request = compile_file(Path(spec["path"]), spec.get("threads", 1)).create_infer_request()
    for _ in range(5):
        request.infer({0: images})


def measure(spec: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Run `probe(spec)` in a fresh Python process; {"error": ...} if it failed."""
    proc = subprocess.run(
        [sys.executable, "-m", "kdpipe.profile.memory", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


def _on_gpu(spec: dict[str, Any]) -> bool:
    if spec.get("kind") == "ort":
        return spec.get("provider", "CPUExecutionProvider") != "CPUExecutionProvider"
    return spec.get("kind") == "tensorrt" or spec.get("device") == "cuda"


def measure_all(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`measure` each spec, in order. CPU children run side by side, up to one per core (at
    most 4): each one's peak RSS is its own, and a child that imports torch spends seconds
    on it. GPU children run one at a time so each has the card to itself."""
    cpu = [i for i, s in enumerate(specs) if not _on_gpu(s)]
    results: list[dict[str, Any]] = [{} for _ in specs]
    workers = max(1, min(len(cpu), os.cpu_count() or 1, 4))
    with ThreadPoolExecutor(workers) as pool:
        for i, result in zip(cpu, pool.map(measure, [specs[i] for i in cpu]), strict=True):
            results[i] = result
    for i, spec in enumerate(specs):
        if i not in cpu:
            results[i] = measure(spec)
    return results


if __name__ == "__main__":
    print(json.dumps(probe(json.loads(sys.argv[1]))))
