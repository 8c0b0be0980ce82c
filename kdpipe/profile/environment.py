"""The machine and software every measurement was taken on (goes into every result)."""

from __future__ import annotations

import os
import platform
import re

import onnx
import onnxruntime
import torch
import torchvision

from kdpipe import __version__


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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


def describe(threads: int) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "cpu": cpu_model(),
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
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
