"""teacher.onnx kept beside the cached teacher: reused by a later export only while it still
is this teacher's, exported again otherwise."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe.data.splits import DataInfo, DataSplits
from kdpipe.export import teacher_cache
from kdpipe.stages import export as stage
from kdpipe.stages.export import export_teacher

INFO = DataInfo("synthetic", [str(i) for i in range(10)], (3, 16, 16), [0.5] * 3, [0.25] * 3)


def _teacher(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)
    ).eval()


def test_a_kept_teacher_onnx_is_reused_only_while_it_passes_the_parity_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    g = torch.Generator().manual_seed(0)
    images = TensorDataset(torch.randn(40, 3, 16, 16, generator=g), torch.randint(0, 10, (40,)))
    data = DataSplits(images, images, images, INFO)
    folder = tmp_path / "cache" / "teachers" / "t-0123"
    assert teacher_cache.cached_onnx(folder, INFO, None) is None  # no cached teacher there
    folder.mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"")
    cached = teacher_cache.cached_onnx(folder, INFO, None)
    assert cached is not None and cached.parent == folder
    # Facts written into the file, or another opset, make another file.
    assert (
        teacher_cache.cached_onnx(folder, dataclasses.replace(INFO, mean=[0.4] * 3), None) != cached
    )
    assert teacher_cache.cached_onnx(folder, INFO, 18) != cached

    exports: list[Path] = []
    export_onnx = stage.export_onnx

    def counted(model: nn.Module, info: DataInfo, path: Path, opset: int | None) -> dict:
        exports.append(path)
        return export_onnx(model, info, path, opset)

    monkeypatch.setattr(stage, "export_onnx", counted)

    def export(teacher: nn.Module, name: str) -> dict:
        return export_teacher(teacher, data, images, tmp_path / name, None, cached)

    first = export(_teacher(0), "a")
    assert len(exports) == 1 and cached.is_file() and "reused" not in first
    second = export(_teacher(0), "b")
    assert len(exports) == 1 and second["reused"] is True
    assert second["parity"] == first["parity"] and second["exporter"] == first["exporter"]
    assert (tmp_path / "b" / "teacher.onnx").read_bytes() == cached.read_bytes()

    # Another teacher of the same architecture (a stale or foreign file): exported again,
    # and the fresh file is what the cache keeps from now on.
    third = export(_teacher(1), "c")
    assert len(exports) == 2 and "reused" not in third
    assert third["parity"]["top1_agreement"] == 1.0
    assert cached.read_bytes() == (tmp_path / "c" / "teacher.onnx").read_bytes()

    # A damaged kept file is said and exported again; the run goes on.
    cached.write_bytes(b"not an onnx file")
    capsys.readouterr()
    fourth = export(_teacher(1), "d")
    err = capsys.readouterr().err
    assert "warning: export: ignoring the kept teacher ONNX" in " ".join(err.split())
    assert cached.name in err.replace("\n", "")  # the path, however the terminal wraps it
    assert len(exports) == 3 and "reused" not in fourth
    assert fourth["parity"]["max_abs_diff"] < 1e-4
