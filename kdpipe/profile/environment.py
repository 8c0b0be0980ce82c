"""The machine and software every measurement was taken on (goes into every result), and
whether this machine has the memory a profile input needs."""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import re

import onnxruntime
import torch
import torchvision

from kdpipe import __version__
from kdpipe.core.errors import ConfigError

# Instruction sets that change what kdpipe's kernels run: VNNI decides onnxruntime's INT8
# path (and reduce_range), BF16/AMX the teacher's precision; absent ones are left out.
CPU_FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "sve",
)


@functools.cache  # read once per process: every result describes the same machine
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """Vendor, family, model and stepping: a VM often names every CPU generation alike
    ("AMD EPYC" for Zen 3 and Zen 4, which differ 2x in latency here), these do not."""
    info = _cpuinfo()
    named = (("family", "cpu family"), ("model", "model"), ("stepping", "stepping"))
    parts = [info.get("vendor_id"), *(f"{n} {info[k]}" for n, k in named if k in info)]
    text = " ".join(p for p in parts if p)
    return text or None


def cpu_features() -> list[str]:
    info = _cpuinfo()  # x86 names them "flags", arm64 "Features"
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return [f for f in CPU_FEATURES if f in flags]


def nvidia_driver() -> str | None:
    """The kernel driver's version from /proc (no nvidia-smi or NVML needed), if loaded."""
    try:
        with open("/proc/driver/nvidia/version", encoding="utf-8") as f:
            first = f.readline()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+([\d.]+)", first)
    return match.group(1) if match else first.strip() or None


def tensorrt_version() -> str | None:
    try:
        import tensorrt as trt
    except ImportError:
        return None
    # tensorrt-stubs installs an empty namespace package: a real TensorRT has a Builder.
    return getattr(trt, "__version__", None) if hasattr(trt, "Builder") else None


def available_memory() -> int | None:
    """Bytes of memory free for a new allocation (Linux's MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe(threads: int) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_driver": nvidia_driver(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tensorrt": tensorrt_version(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "kdpipe": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        # read from its installed metadata: importing onnx costs every process half a second
        "onnx": importlib.metadata.version("onnx"),
        "onnxruntime": onnxruntime.__version__,
        "openvino": _version_of("openvino"),
    }


def _version_of(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_input_fits(batch: int, chw: list[int]) -> None:
    """The profile's input (the largest batch), and the copy a backend makes of it, must fit in
    free memory: an ONNX file fixing a 3x60000x60000 input was an internal error (torch could
    not allocate 43 GB); a run checks before its teacher trains, not two stages later."""
    need, free = 4 * batch * math.prod(chw), available_memory()
    if free is not None and 2 * need > free:
        shape = "x".join(map(str, [batch, *chw]))
        raise ConfigError(
            f"a profile input of {shape} floats is {need / 1e9:.1f} GB; with a backend's copy "
            f"that is more than the {free / 1e9:.1f} GB of memory free here",
            "pass smaller --batch-sizes or --input-size (a model that fixes its input size "
            "needs a machine with more memory)",
        )
