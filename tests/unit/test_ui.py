"""Status, warning and error lines print their text as given, brackets and all."""

from __future__ import annotations

import socket

import pytest

from kdpipe.core import ui


@pytest.mark.parametrize(
    "say",
    [ui.info, ui.warn, lambda m: ui.error(m, f"pip install '{m}'")],
)
def test_brackets_are_text_not_markup(say, capsys) -> None:
    ui.set_quiet(False)
    say("kdpipe[gpu] in /data/[red]x")
    err = capsys.readouterr().err
    assert "kdpipe[gpu] in /data/[red]x" in err


def test_ranks_other_than_0_print_no_status_or_warnings_but_errors(
    capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every rank reads the same files: a skipped image was warned once per process.
    monkeypatch.setattr(ui, "_quiet", False)
    monkeypatch.setattr(ui, "_warnings", True)
    ui.silence_rank()
    ui.info("status")
    ui.warn("skipped 1 image(s)")
    ui.error("out of memory", "lower --batch-size")
    err = capsys.readouterr().err
    assert "status" not in err and "skipped" not in err
    assert "error: out of memory" in err and "hint: lower --batch-size" in err


@pytest.mark.parametrize(
    ("rank", "local_rank", "world", "warns"),
    [
        (1, 1, 2, False),  # one machine of 2 processes: rank 0's warnings are every rank's
        (2, 0, 4, True),  # the first process of a second machine: its files may differ
        (3, 1, 4, False),  # ... which that machine's first process says
    ],
)
def test_the_first_process_of_another_machine_warns_until_the_ranks_compared(
    capsys, monkeypatch: pytest.MonkeyPatch, rank: int, local_rank: int, world: int, warns: bool
) -> None:
    for name, value in (
        ("RANK", rank),
        ("LOCAL_RANK", local_rank),
        ("WORLD_SIZE", world),
        ("LOCAL_WORLD_SIZE", 2),
    ):
        monkeypatch.setenv(name, str(value))
    for name, value in (("_quiet", False), ("_warnings", True), ("_compared", False)):
        monkeypatch.setattr(ui, name, value)  # restored after the test, as silence_rank sets them
    ui.silence_rank()
    ui.warn("skipped 1 image(s) that could not be decoded")
    err = " ".join(capsys.readouterr().err.split())
    expected = f"warning: rank {rank} on {socket.gethostname()}: skipped 1 image(s)"
    assert (expected in err) == warns and (err != "") == warns
    ui.silence_rank(compared=True)  # the ranks' inputs are alike: rank 0 speaks for all
    ui.warn("skipped 1 image(s) that could not be decoded")
    assert capsys.readouterr().err == ""
