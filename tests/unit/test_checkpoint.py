"""The checkpoint writer: in place (CPU training) or from a snapshot in a background thread
(GPU training); either way the file holds the state as it was when handed over."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from kdpipe.distill import checkpoint as ckpt


@pytest.mark.parametrize("background", [False, True])
def test_written_state_is_the_state_at_submit(tmp_path: Path, background: bool) -> None:
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k1")
    weights = torch.arange(6.0)
    writer = ckpt.Writer(background=background)
    writer.submit(ck, {"model": {"w": weights}, "history": [1]})
    weights.add_(100.0)  # training goes on and changes the live tensor in place
    writer.wait()
    found = ckpt.load(ck)
    assert found is not None and found[1] == ck.path
    saved = found[0]
    assert saved["key"] == "k1"
    # In place: written before submit returned; background: written from a snapshot.
    assert torch.equal(saved["model"]["w"], torch.arange(6.0))
    assert not list(tmp_path.glob(".last.pt.*.tmp"))


def test_background_write_error_reaches_the_training_thread(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    ck = ckpt.Checkpointing(blocker / "last.pt", key="k")
    writer = ckpt.Writer(background=True)
    writer.submit(ck, {"w": torch.zeros(2)})
    with pytest.raises(OSError):
        writer.wait()
    writer.wait()  # the error is reported once


def test_each_checkpoint_is_written_into_the_previous_ones_file(tmp_path: Path) -> None:
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k")
    spare = tmp_path / ".last.pt.spare.tmp"
    inodes = []
    for epoch in range(1, 5):
        ckpt.save(ck, {"epoch": epoch, "w": torch.full((1000,), float(epoch))})
        inodes.append(ck.path.stat().st_ino)
        saved = torch.load(ck.path, weights_only=True)
        assert saved["epoch"] == epoch and torch.equal(
            saved["w"], torch.full((1000,), float(epoch))
        )
        if epoch > 1:  # the checkpoint it replaced is now the spare, to be overwritten next
            assert spare.stat().st_ino == inodes[-2]
    assert inodes[2] == inodes[0] and inodes[3] == inodes[1]  # two files, used in turn
    # A smaller state leaves no tail of the larger one behind.
    ckpt.save(ck, {"epoch": 5})
    assert torch.load(ck.path, weights_only=True) == {"key": "k", "epoch": 5}
    assert ckpt.load(ck) == ({"key": "k", "epoch": 5}, ck.path) and spare.exists()
    ckpt.discard(ck)
    assert not list(tmp_path.iterdir())


def test_without_hard_links_each_checkpoint_gets_a_fresh_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(src: object, dst: object) -> None:
        raise OSError("hard links not supported")

    monkeypatch.setattr(ckpt.os, "link", no_links)
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k")
    for epoch in (1, 2, 3):
        ckpt.save(ck, {"epoch": epoch})
        assert torch.load(ck.path, weights_only=True)["epoch"] == epoch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_full_disk_is_an_oserror_naming_the_checkpoint_and_the_last_one_stays_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # torch.save reports a full disk as RuntimeError("unexpected pos ..."); kdpipe surfaces
    # the OSError underneath, named after the checkpoint, so the CLI can say what to do.
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k")
    ckpt.save(ck, {"w": torch.arange(4.0)})
    real_open = open
    monkeypatch.setattr(ckpt, "open", lambda p, mode: real_open("/dev/full", "wb"), raising=False)
    with pytest.raises(OSError) as e:
        ckpt.save(ck, {"w": torch.zeros(1000)})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(ck.path)
    monkeypatch.undo()
    found = ckpt.load(ck)
    assert found is not None and torch.equal(found[0]["w"], torch.arange(4.0))


def _flip_inside(path: Path, pattern: bytes) -> None:
    """Change one bit in the middle of the bytes of a tensor filled with one value (the file's
    size stays, as after a bad sector or a bit flip in memory on the way to the disk)."""
    data = bytearray(path.read_bytes())
    at = data.index(pattern * 64) + 32 * len(pattern)
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_checkpoint_damaged_after_writing_is_not_resumed_the_one_before_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k")
    spare = tmp_path / ".last.pt.spare.tmp"
    for epoch in (1, 2):
        ckpt.save(ck, {"epoch": epoch, "w": torch.full((1000,), float(epoch))})
    two = torch.tensor(2.0).numpy().tobytes()
    _flip_inside(ck.path, two)
    assert torch.load(ck.path, weights_only=True)["epoch"] == 2  # torch alone takes it
    found = ckpt.load(ck)
    assert found is not None and found[1] == spare
    assert found[0]["epoch"] == 1 and torch.equal(found[0]["w"], torch.full((1000,), 1.0))
    assert "fails its CRC-32 check" in " ".join(capsys.readouterr().err.split())
    # The first write after resuming goes beside the file resumed from, not into it: a kill
    # during that write must still leave a whole checkpoint.
    writer = ckpt.Writer(background=False, resumed_from=found[1])
    real_save = ckpt.torch_save_into
    during: list[tuple[int, Path]] = []

    def watched(obj: object, f: object) -> None:
        now = ckpt.load(ck)
        assert now is not None
        during.append((now[0]["epoch"], now[1]))
        real_save(obj, f)

    monkeypatch.setattr(ckpt, "torch_save_into", watched)
    writer.submit(ck, {"epoch": 3, "w": torch.full((1000,), 3.0)})
    assert during == [(1, ck.path)]  # while epoch 3 was written, epoch 1 was the checkpoint
    monkeypatch.undo()
    after = ckpt.load(ck)
    assert after is not None and after[0]["epoch"] == 3 and after[1] == ck.path
    assert torch.load(spare, weights_only=True)["epoch"] == 1


def test_a_spare_cut_off_while_being_overwritten_is_never_resumed(tmp_path: Path) -> None:
    ck = ckpt.Checkpointing(tmp_path / "last.pt", key="k")
    spare = tmp_path / ".last.pt.spare.tmp"
    for epoch in (1, 2):
        ckpt.save(ck, {"epoch": epoch, "w": torch.full((4000,), float(epoch))})
    # What a kill half-way through the next save leaves: epoch 3's first bytes over epoch 1's
    # file (same layout), the rest and the zip directory still epoch 1's.
    third = tmp_path / "third.pt"
    torch.save({"key": "k", "epoch": 3, "w": torch.full((4000,), 3.0)}, third)
    new, old = third.read_bytes(), bytearray(spare.read_bytes())
    old[: len(new) // 2] = new[: len(new) // 2]
    spare.write_bytes(bytes(old))
    ck.path.unlink()  # and the last checkpoint lost as well
    mixed = torch.load(spare, weights_only=True)  # torch alone loads a state never saved
    assert mixed["epoch"] == 3 and float(mixed["w"][-1]) == 1.0
    assert ckpt.load(ck) is None
