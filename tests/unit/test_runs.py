"""Run directory bookkeeping: atomic writes and stage fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdpipe.runs import RunDir, atomic_path, fingerprint, write_json


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"v": 2, "half')
            raise RuntimeError("crash mid-write")
    assert target.read_text().strip().endswith("}") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_stage_done_only_with_same_fingerprint_and_outputs(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    fp = fingerprint("distill", {"epochs": 3})
    assert fp == fingerprint("distill", {"epochs": 3}) != fingerprint("distill", {"epochs": 4})
    (tmp_path / "distill").mkdir()
    (tmp_path / "distill" / "student.pt").write_bytes(b"x")
    rd.mark_done("distill", fp, ["student.pt"], 1.0)
    assert rd.is_done("distill", fp)
    assert not rd.is_done("distill", fingerprint("distill", {"epochs": 4}))
    (tmp_path / "distill" / "student.pt").unlink()
    assert not rd.is_done("distill", fp)
