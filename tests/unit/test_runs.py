"""Run directory bookkeeping: atomic writes and stage fingerprints."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kdpipe.runs import RunDir, atomic_path, fingerprint, write_json, write_text


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
    (tmp_path / "distill" / "student.pt").write_bytes(b"xy")  # not what the stage wrote
    assert not rd.is_done("distill", fp)
    (tmp_path / "distill" / "student.pt").unlink()
    assert not rd.is_done("distill", fp)


def test_a_malicious_or_foreign_checkpoint_is_never_resumed(tmp_path: Path) -> None:
    import torch

    from kdpipe.distill import checkpoint as ckpt

    class Payload:
        def __reduce__(self):  # what a plain unpickle would run
            return (Path.touch, (tmp_path / "pwned",))

    ck = ckpt.Checkpointing(tmp_path / "checkpoints" / "last.pt", key="abc")
    ck.path.parent.mkdir()
    torch.save({"key": "abc", "x": Payload()}, ck.path)
    assert ckpt.load(ck) is None and not (tmp_path / "pwned").exists()
    torch.save({"key": "other-inputs", "epoch": 3}, ck.path)
    assert ckpt.load(ck) is None
    (ck.path.parent / ".last.pt.x1.tmp").write_bytes(b"half a checkpoint")  # killed mid-write
    ckpt.save(ck, {"epoch": 2})
    assert ckpt.load(ck) == {"key": "abc", "epoch": 2}
    assert not list(ck.path.parent.glob(".*.tmp"))


def test_artifacts_get_the_mode_a_plain_open_gives_them(tmp_path: Path) -> None:
    # mkstemp creates 0600 files: every report and model was readable by its owner alone.
    mask = os.umask(0o022)
    os.umask(mask)
    write_text(tmp_path / "report.md", "# r\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == stat.S_IMODE(
        plain.stat().st_mode
    )
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask


def test_samples_that_are_not_lists_of_numbers_are_left_out(tmp_path: Path) -> None:
    from kdpipe.runs import load_samples

    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "samples.json").write_text(
        '{"a": [1.5, 2], "b": ["x", 1], "c": 3, "d": [true], "e": []}'
    )
    assert load_samples(tmp_path) == {"a": [1.5, 2]}


def test_a_write_error_without_a_file_name_names_the_file_being_made(tmp_path: Path) -> None:
    # onnx.save on a full disk raised OSError(28) with no file name: "cannot write a file".
    import errno

    from kdpipe.runs import naming

    with pytest.raises(OSError) as e, naming(tmp_path / "student.int8.onnx"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(tmp_path / "student.int8.onnx")
    with pytest.raises(OSError) as e, naming(tmp_path / "student.int8.onnx"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "other"))
    assert e.value.filename == str(tmp_path / "other")  # a name it has is kept


def test_a_path_the_system_refuses_names_the_file_not_its_temporary_name(tmp_path: Path) -> None:
    from kdpipe.runs import write_text

    with pytest.raises(IsADirectoryError) as e:
        write_text(tmp_path, "x")  # the rename onto a folder of that name
    assert (e.value.filename, e.value.filename2) == (str(tmp_path), None)
    with pytest.raises(OSError) as e:
        write_text(Path("/proc/report.md"), "x")  # a folder that takes no new files
    assert e.value.filename == "/proc/report.md"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
