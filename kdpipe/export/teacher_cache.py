"""teacher.onnx kept beside the cached teacher it was exported from, for later runs.

Runs that try several students or methods against one teacher exported the same teacher
again each time (the dynamo exporter: ~5 s for a resnet18 on 2 cores, more for a resnet50).
A copy is reused only under the same key (input facts written into the file, opset, the
versions of the exporter and kdpipe), and only after it passes the same parity check against
the teacher in PyTorch as a fresh export; otherwise the teacher is exported again."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import torch

from kdpipe.core import cache
from kdpipe.core.runs import atomic_path, fingerprint, read_json, write_json
from kdpipe.data import DataInfo

# A kept file must agree on top-1 as a fresh export must (stage.FP32_MIN_AGREEMENT) and give
# the teacher's logits to FP32 rounding (fresh exports differ by ~1e-5): a file of another
# teacher can agree on every top-1 and still not be this teacher.
REUSE_MAX_ABS_DIFF = 1e-3


def reusable(parity: dict, min_agreement: float) -> bool:
    """Whether a teacher.onnx with this parity against the teacher may be kept or reused."""
    return (
        parity["top1_agreement"] >= min_agreement and parity["max_abs_diff"] <= REUSE_MAX_ABS_DIFF
    )


def cached_onnx(teacher_dir: Path | None, info: DataInfo, opset: int | None) -> Path | None:
    """Where teacher.onnx for these settings is kept: in the cached teacher's folder, if the
    teacher came from kdpipe's cache (a teacher given as weights has no folder there)."""
    if teacher_dir is None or not (teacher_dir / "model.pt").is_file():
        return None
    versions = [importlib.metadata.version(p) for p in ("onnx", "onnxscript")]
    key = fingerprint("teacher-onnx", info.to_dict(), opset, torch.__version__, *versions)
    return teacher_dir / f"teacher-{key}.onnx"


def reuse(cached: Path, path: Path) -> dict | None:
    """Copy a kept teacher.onnx to `path`; its export facts, or None where there is none (or
    it cannot be read: a cache on a disk that filled up costs the reuse, not the run)."""
    facts = cached.with_suffix(".json")
    if not (cached.is_file() and facts.is_file()):
        return None

    def read() -> dict | None:
        how = read_json(facts)
        with atomic_path(path) as tmp:
            shutil.copyfile(cached, tmp)
        return how if isinstance(how, dict) else None

    return cache.read_back("export", f"the kept teacher ONNX {cached}", "exporting it again", read)


def keep(path: Path, how: dict, cached: Path) -> None:
    """Keep a checked teacher.onnx for later runs, if the cache can take it."""

    def write() -> None:
        with atomic_path(cached) as tmp:
            shutil.copyfile(path, tmp)
        write_json(cached.with_suffix(".json"), how)

    cache.keep("export: teacher ONNX", "export it again", write)
