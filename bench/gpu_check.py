"""Exercise every GPU path the machine allows and print a table (not a test).

    bash bench/gpu_check.sh [SECTION ...]   # all sections by default; $OUT/gpu_check.json

Measures, on CUDA: inference latency with CUDA events (device time) and wall time
(end to end), FP32 vs AMP (bf16 where supported, else fp16) vs AMP + channels_last, for
resnet50 and resnet18 at batch 1 and 32 on 3x32x32 and 3x224x224; training throughput FP32
vs AMP + channels_last; a TensorRT engine through kdpipe.runtimes.tensorrt and
onnxruntime-gpu's CUDA provider when installed; kdpipe itself: the distill stage with and
without AMP (and over NCCL with several GPUs), image files with loader workers, the whole
pipeline, a scheduler's SIGTERM to the job and its resume, a batch too large for the card.
Each missing piece is reported as skipped with its reason. Never changes the card's settings.

For #6's open GPU items, in one call: `bash bench/gpu_check.sh train-large kdpipe-amp
kdpipe-files kdpipe-stop kdpipe-oom`.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

ROWS: list[dict] = []


def row(**kw: object) -> None:
    ROWS.append(kw)
    print("  ".join(f"{k}={v}" for k, v in kw.items()), flush=True)
    out = os.environ.get("OUT")
    if out:  # after every row, so a run cut off by its time limit still reports what it did
        Path(out, "gpu_check.json").write_text(json.dumps(ROWS, indent=1))


def cuda_latency(model: torch.nn.Module, x: torch.Tensor, iters: int = 100) -> tuple[float, float]:
    """Median device time (CUDA events) and median wall time per call, milliseconds."""
    for _ in range(10):
        model(x)
    torch.cuda.synchronize()
    device, wall = [], []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        model(x)
        end.record()
        end.synchronize()
        wall.append((time.perf_counter() - t0) * 1e3)
        device.append(start.elapsed_time(end))
    return sorted(device)[len(device) // 2], sorted(wall)[len(wall) // 2]


def amp_dtype() -> torch.dtype:
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@torch.inference_mode()
def inference_modes() -> None:
    dtype = amp_dtype()
    for arch in ("resnet50", "resnet18"):
        for size in (32, 224):
            for bs in (1, 32):
                base = torchvision.models.get_model(arch, num_classes=10).cuda().eval()
                x = torch.randn(bs, 3, size, size, device="cuda")
                results = {}
                for mode in ("fp32", "amp", "amp+channels_last"):
                    model, inp = base, x
                    if mode == "amp+channels_last":
                        model = base.to(memory_format=torch.channels_last)
                        inp = x.contiguous(memory_format=torch.channels_last)
                    if mode == "fp32":
                        dev, wall = cuda_latency(model, inp)
                    else:
                        with torch.autocast("cuda", dtype=dtype):
                            dev, wall = cuda_latency(model, inp)
                    results[mode] = dev
                    row(
                        kind="latency",
                        arch=arch,
                        size=size,
                        batch=bs,
                        mode=mode,
                        amp_dtype=str(dtype).split(".")[-1],
                        device_ms=round(dev, 4),
                        wall_ms=round(wall, 4),
                        speedup_vs_fp32=round(results["fp32"] / dev, 2),
                    )


def train_rates(
    kind: str, arch: str, size: int, bs: int, steps: int, warm: int, strict: bool = False
) -> None:
    """Training images/s on synthetic data, fp32 against AMP + channels_last, one row each.
    cuDNN's default "fp32" convolutions are TF32; `strict` adds a row with TF32 off (IEEE
    fp32), the baseline AMP is usually quoted against."""
    dtype = amp_dtype()
    rates: dict[str, float] = {}
    modes = ("fp32", "amp+channels_last") + (("fp32-no-tf32",) if strict else ())
    default_tf32 = torch.backends.cudnn.allow_tf32
    for mode in modes:
        torch.backends.cudnn.allow_tf32 = default_tf32 and mode != "fp32-no-tf32"
        torch.manual_seed(0)
        model = torchvision.models.get_model(arch, num_classes=10).cuda()
        x = torch.randn(bs, 3, size, size, device="cuda")
        y = torch.randint(0, 10, (bs,), device="cuda")
        amp = mode == "amp+channels_last"
        if amp:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
        for i in range(steps + warm):
            if i == warm:
                torch.cuda.synchronize()
                t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        torch.cuda.synchronize()
        rates[mode] = steps * bs / (time.perf_counter() - t0)
        row(
            kind=kind,
            arch=arch,
            size=size,
            batch=bs,
            mode=mode,
            tf32_convs=torch.backends.cudnn.allow_tf32,
            images_per_s=round(rates[mode], 1),
            speedup_vs_fp32=round(rates[mode] / rates["fp32"], 2),
        )
    torch.backends.cudnn.allow_tf32 = default_tf32
    if strict:
        row(
            kind=kind,
            arch=arch,
            mode="amp+channels_last vs fp32-no-tf32",
            speedup=round(rates["amp+channels_last"] / rates["fp32-no-tf32"], 2),
        )


def training_throughput() -> None:
    for arch in ("resnet50", "resnet18"):
        for size, bs in ((32, 256), (224, 64)):
            train_rates("train", arch, size, bs, steps=30, warm=5)


def tensorrt_and_ort_gpu() -> None:
    try:
        from kdpipe.data.splits import DataInfo
        from kdpipe.export.onnx import export_onnx
        from kdpipe.runtimes import tensorrt
    except ImportError as e:  # kdpipe's own dependencies may be missing on a bare GPU image
        row(kind="tensorrt", status="skipped", reason=f"kdpipe not importable: {e}")
        return

    info = DataInfo("synthetic", [str(i) for i in range(10)], (3, 224, 224), [0.5] * 3, [0.25] * 3)
    model = torchvision.models.get_model("resnet18", num_classes=10).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "resnet18.onnx"
        export_onnx(model, info, onnx_path)
        x = torch.randn(8, 3, 224, 224)
        ref = model(x).detach()
        reason = tensorrt.unavailable_reason()
        if reason:
            row(kind="tensorrt", status="skipped", reason=reason)
        else:
            plan = Path(tmp) / "resnet18.plan"
            meta = tensorrt.build_engine(
                onnx_path, plan, (3, 224, 224), [1, 8, 32], "fp32", Path(tmp) / "timing.cache"
            )
            runner = tensorrt.TensorRTRunner(plan)
            got = runner(x.cuda()).cpu()
            dev, wall = cuda_latency(lambda t: runner(t), x.cuda())  # type: ignore[arg-type]
            row(
                kind="tensorrt",
                status="ok",
                version=meta["tensorrt_version"],
                max_abs_diff=float((got - ref).abs().max()),
                device_ms=round(dev, 4),
                wall_ms=round(wall, 4),
                build_s=round(meta["build_seconds"], 1),
            )
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            row(
                kind="ort-cuda",
                status="skipped",
                reason=f"onnxruntime {ort.__version__} has no CUDA provider (pip install onnxruntime-gpu)",
            )
        else:
            sess = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
            got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
            row(kind="ort-cuda", status="ok", max_abs_diff=float((got - ref).abs().max()))


def _kdpipe(args: list[str], env: dict[str, str], limit: int) -> tuple[bool, str]:
    """Run `python -m kdpipe ARGS`; (ok, last error line)."""
    import subprocess

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "kdpipe", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {limit} s"
    lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return proc.returncode == 0, (lines[-1] if lines else "")


WORK = Path(tempfile.mkdtemp(prefix="kdpipe-gpu-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)  # the rows are what is kept
ENV = {**os.environ, "KDPIPE_CACHE": str(WORK / "cache")}
QUICK = ["--quiet", "--teacher-epochs", "3"]


def _teacher() -> Path | None:
    """A digits teacher trained once by kdpipe on the GPU, shared by the kdpipe sections."""
    path = WORK / "t" / "teacher" / "model.pt"
    if not path.is_file():
        ok, err = _kdpipe(["run", *QUICK, "--until", "teacher", "--out", str(WORK / "t")], ENV, 240)
        if not ok:
            row(kind="kdpipe-teacher", status="failed", error=err)
            return None
    return path


def kdpipe_amp(epochs: int = 3) -> None:
    """kdpipe's distill stage with AMP + channels_last against --no-amp: digits at 32 px,
    where the GPU is launch-bound, and upscaled to 128 px, where it is less so; with several
    GPUs the same stage through `kdpipe run --nproc N` (NCCL)."""
    teacher = _teacher()
    if teacher is None:
        return
    for size in (32, 128):
        for amp in ("--no-amp", "--amp"):
            name = f"distill-{size}px-{'amp' if amp == '--amp' else 'fp32'}"
            out = WORK / name
            args = ["run", *QUICK, "--until", "distill", "--epochs", str(epochs), amp]
            args += ["--image-size", str(size), "--teacher-weights", str(teacher)]
            ok, err = _kdpipe([*args, "--out", str(out)], ENV, 180)
            if not ok:
                row(kind=name, status="failed", error=err)
                continue
            m = json.loads((out / "distill" / "metrics.json").read_text())
            row(
                kind=name,
                status="ok",
                images_per_s=round(m["images_per_s"], 1),
                test_accuracy=round(m["test_accuracy"], 4),
            )
    # --augment on the GPU: the draws live on the device, the teacher runs every batch
    out = WORK / "distill-32px-amp-augment"
    args = ["run", *QUICK, "--until", "distill", "--epochs", str(epochs), "--amp"]
    args += ["--augment", "crop-flip", "--teacher-weights", str(teacher), "--out", str(out)]
    ok, err = _kdpipe(args, ENV, 180)
    if ok:
        m = json.loads((out / "distill" / "metrics.json").read_text())
        row(kind=out.name, status="ok", images_per_s=round(m["images_per_s"], 1))
    else:
        row(kind=out.name, status="failed", error=err)
    if torch.cuda.device_count() > 1:
        n = str(torch.cuda.device_count())
        for extra in ([], ["--sync-bn"]):  # torch's SyncBatchNorm over NCCL
            name = f"distill-ddp{n}" + "".join(x.replace("--", "-") for x in extra)
            args = ["run", *QUICK, "--until", "distill", "--epochs", str(epochs), "--amp"]
            args += ["--teacher-weights", str(teacher), "--nproc", n, *extra]
            ok, err = _kdpipe([*args, "--out", str(WORK / name)], ENV, 240)
            row(kind=name, status="ok" if ok else "failed", error=err)
    else:
        row(kind="distill-ddp", status="skipped", reason="one GPU: NCCL needs a GPU per rank")


def kdpipe_files(epochs: int = 2, per_class: int = 128, size: int = 160) -> None:
    """Image files on the GPU: 1,280 JPEGs of 320 x 240 in 10 class folders, resnet18 ->
    resnet18 at 160 px with ImageNet's random resized crops (cut from each decoded file while
    loading), the DataLoader workers kdpipe picks against `--workers 0`."""
    import numpy as np
    from PIL import Image

    root = WORK / "jpegs"
    rng = np.random.default_rng(0)
    for k in range(10):
        (root / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.normal(20 * k + 40, 40, (240, 320, 3)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{k}" / f"{i}.jpg", quality=90)
    base = ["run", "--quiet", "--data", f"imagefolder:{root}", "--image-size", str(size)]
    base += ["--teacher", "resnet18", "--student", "resnet18", "--teacher-epochs", "1"]
    base += ["--epochs", str(epochs), "--augment", "resized-crop-flip", "--until", "distill"]
    for workers in ([], ["--workers", "0"]):
        name = f"files-{size}px-workers-" + (workers[1] if workers else "auto")
        ok, err = _kdpipe([*base, *workers, "--out", str(WORK / name)], ENV, 240)
        if not ok:
            row(kind=name, status="failed", error=err)
            continue
        m = json.loads((WORK / name / "distill" / "metrics.json").read_text())
        row(kind=name, status="ok", images_per_s=round(m["images_per_s"], 1))


def kdpipe_full() -> None:
    """The whole pipeline (small settings): its profile stage adds torch-cuda (CUDA events
    and wall time; memory from max_memory_allocated in a fresh process) beside torch-cpu and
    ort-cpu. report.json and report.md are copied to $OUT."""
    import shutil

    teacher = _teacher()
    if teacher is None:
        return
    out = WORK / "full"
    args = ["run", *QUICK, "--epochs", "1", "--teacher-weights", str(teacher)]
    args += ["--precision", "fp32", "--batch-sizes", "1,8", "--min-seconds", "0.3"]
    args += ["--min-iters", "100", "--out", str(out)]
    ok, err = _kdpipe(args, ENV, 200)
    if not ok:
        row(kind="kdpipe-run", status="failed", error=err)
        return
    report = json.loads((out / "report.json").read_text())
    for key, value in sorted(report.get("metrics", {}).items()):
        if "cuda" in key and (key.endswith(("p50_ms", "p95_ms")) or ".memory." in key):
            row(kind="kdpipe-run-metric", key=key, value=value)
    row(kind="kdpipe-run", status="ok", skipped=report.get("skipped_backends"))
    if os.environ.get("OUT"):
        for name in ("report.json", "report.md"):
            shutil.copy(out / name, Path(os.environ["OUT"], name))


def kdpipe_stop(epochs: int = 3) -> None:
    """A scheduler's SIGTERM to the whole job on the GPU (AMP, pinned memory, 2 loader
    workers): a loader worker sends it to the process group as it loads its 300th image. The
    run must stop at a step with its checkpoint (exit 143), its process group gone within
    seconds, and the same command must then finish."""
    import signal
    import subprocess

    teacher = _teacher()
    if teacher is None:
        return
    out = WORK / "stopped"
    args = ["run", *QUICK, "--until", "distill", "--epochs", str(epochs), "--workers", "2"]
    args += ["--teacher-weights", str(teacher), "--out", str(out)]
    faults = str(Path(__file__).resolve().parents[1] / "tests" / "faults")  # KDPIPE_FAULT's hooks
    env = {**ENV, "KDPIPE_FAULT": "load:300:TERM:group", "PYTHONPATH": faults}
    start = time.monotonic()
    proc = subprocess.Popen(  # a group of its own: the signal must not reach this script
        [sys.executable, "-m", "kdpipe", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        row(kind="kdpipe-stop", status="failed", error="no stop within 240 s")
        return
    took = time.monotonic() - start
    lines = err.strip().splitlines()
    stopped = proc.returncode == 143 and "its checkpoint written" in err
    row(
        kind="kdpipe-stop",
        status="ok" if stopped else "failed",
        exit=proc.returncode,
        seconds=round(took, 1),
        line=next((x for x in lines if x.startswith("error:")), lines[-1] if lines else ""),
    )
    ok, last = _kdpipe(args, ENV, 240)
    row(kind="kdpipe-stop-resumed", status="ok" if ok else "failed", error=last)


def kdpipe_oom() -> None:
    """A batch too large for the card (resnet50 at 512 px, batch 1024: hundreds of GB of
    activations): one line naming it and the fix, exit 1, no traceback."""
    out = WORK / "oom"
    args = ["run", "--quiet", "--until", "teacher", "--teacher-epochs", "1", "--image-size"]
    args += ["512", "--batch-size", "1024", "--out", str(out)]
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "kdpipe", *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    said = proc.stderr.strip().splitlines()
    ok = proc.returncode == 1 and "out of memory" in proc.stderr and "Traceback" not in proc.stderr
    row(kind="kdpipe-oom", status="ok" if ok else "failed", exit=proc.returncode, said=said[:2])


def training_large_batch() -> None:
    """AMP + channels_last against fp32 where the GPU, not the Python launcher, is the limit:
    resnet50 training at 224 px, batch 256."""
    train_rates("train-large", "resnet50", 224, 256, steps=12, warm=3, strict=True)


SECTIONS = {
    "inference": lambda: inference_modes(),
    "train": lambda: training_throughput(),
    "train-large": lambda: training_large_batch(),
    "tensorrt": lambda: tensorrt_and_ort_gpu(),
    "kdpipe-amp": lambda: kdpipe_amp(),
    "kdpipe-files": lambda: kdpipe_files(),
    "kdpipe-full": lambda: kdpipe_full(),
    "kdpipe-stop": lambda: kdpipe_stop(),
    "kdpipe-oom": lambda: kdpipe_oom(),
}


def main() -> None:
    env = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "python": platform.python_version(),
    }
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; nothing to measure here.")
        row(kind="environment", **env)
    else:
        env.update(
            gpu=torch.cuda.get_device_name(0),
            gpus=torch.cuda.device_count(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
            cuda=torch.version.cuda,
            bf16=torch.cuda.is_bf16_supported(),
        )
        row(kind="environment", **env)
        torch.backends.cudnn.benchmark = True
        for name in sys.argv[1:] or list(SECTIONS):
            SECTIONS[name]()


if __name__ == "__main__":
    main()
