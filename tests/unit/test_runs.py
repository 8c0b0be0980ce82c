"""Run directory bookkeeping: atomic writes and stage fingerprints."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from pathlib import Path

import pytest

from kdpipe.core.runs import (
    DamagedFile,
    RunDir,
    atomic_path,
    damaged_record,
    fingerprint,
    load_torch,
    write_json,
    write_text,
)


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


def test_an_output_changed_in_place_makes_its_stage_run_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rd = RunDir(tmp_path)
    onnx = tmp_path / "export" / "student.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(bytes(range(256)) * 8)
    rd.mark_done("export", "fp", ["student.onnx"], 1.0)
    assert rd.is_done("export", "fp")
    data = bytearray(onnx.read_bytes())
    data[1000] ^= 0x01  # same size, one bit: a bad sector, an editor, a copy gone wrong
    onnx.write_bytes(bytes(data))
    assert not rd.is_done("export", "fp")
    assert "changed since the stage wrote it" in capsys.readouterr().err
    # stage.json written before digests were kept: the size check alone, as before
    record = json.loads((tmp_path / "export" / "stage.json").read_text())
    del record["sha256"]
    (tmp_path / "export" / "stage.json").write_text(json.dumps(record))
    assert rd.is_done("export", "fp")


def test_only_torch_zip_files_with_checksums_are_checked(tmp_path: Path) -> None:
    import torch
    import torch.utils.serialization

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(100)}, plain)
    assert damaged_record(plain) is None
    raw = bytearray(plain.read_bytes())
    raw[raw.index(torch.ones(1).numpy().tobytes() * 8) + 4] ^= 0x01
    plain.write_bytes(bytes(raw))
    assert damaged_record(plain) == "plain/data/0"
    with pytest.raises(DamagedFile, match="plain/data/0 fails its CRC-32 check"):
        load_torch(plain)
    unchecked = tmp_path / "unchecked.pt"  # saved without checksums: nothing to check
    with torch.utils.serialization.config.patch({"save.compute_crc32": False}):
        torch.save({"w": torch.ones(100)}, unchecked)
    assert damaged_record(unchecked) is None and load_torch(unchecked)["w"].sum() == 100
    # Compressed records are never torch's: left to torch.load (a zip bomb is not read here).
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb/data.pkl", b"\0" * 10_000_000)
    assert damaged_record(bomb) is None
    assert damaged_record(tmp_path / "absent.pt") is None
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    assert damaged_record(tmp_path / "junk.pt") is None


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
    assert ckpt.load(ck) == ({"key": "abc", "epoch": 2}, ck.path)
    ckpt.discard(ck)  # the stage's end clears what a kill left
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
    from kdpipe.core.runs import load_samples

    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "samples.json").write_text(
        '{"a": [1.5, 2], "b": ["x", 1], "c": 3, "d": [true], "e": []}'
    )
    assert load_samples(tmp_path) == {"a": [1.5, 2]}


def test_a_write_error_without_a_file_name_names_the_file_being_made(tmp_path: Path) -> None:
    # onnx.save on a full disk raised OSError(28) with no file name: "cannot write a file".
    import errno

    from kdpipe.core.runs import naming

    with pytest.raises(OSError) as e, naming(tmp_path / "student.int8.onnx"):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(tmp_path / "student.int8.onnx")
    with pytest.raises(OSError) as e, naming(tmp_path / "student.int8.onnx"):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "other"))
    assert e.value.filename == str(tmp_path / "other")  # a name it has is kept


def test_a_path_the_system_refuses_names_the_file_not_its_temporary_name(tmp_path: Path) -> None:
    from kdpipe.core.runs import write_text

    with pytest.raises(IsADirectoryError) as e:
        write_text(tmp_path, "x")  # the rename onto a folder of that name
    assert (e.value.filename, e.value.filename2) == (str(tmp_path), None)
    with pytest.raises(OSError) as e:
        write_text(Path("/proc/report.md"), "x")  # a folder that takes no new files
    assert e.value.filename == "/proc/report.md"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
