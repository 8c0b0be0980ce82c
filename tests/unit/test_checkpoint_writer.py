"""The checkpoint writer: in place (CPU training) or from a snapshot in a background thread
(GPU training); either way the file holds the state as it was when handed over."""

from __future__ import annotations

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
    saved = ckpt.load(ck)
    assert saved is not None and saved["key"] == "k1"
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
