"""How exceptions that are not kdpipe's own become one line and an exit code (cli.errors_reported)."""

from __future__ import annotations

import socket

import pytest
import typer

from kdpipe.cli import errors_reported
from kdpipe.core import ui
from kdpipe.core.errors import ConfigError, DataError

GLOO = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
    "[127.0.0.1]:8067: Connection reset by peer. This is typically caused by a remote worker "
    "hanging or bugs in the application. Check the logs of the remote worker before reporting "
    "an error. GLHF!"
)


def _report(e: Exception, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(typer.Exit) as exit_, errors_reported(debug=False):
        raise e
    return exit_.value.exit_code, capsys.readouterr().err.strip().splitlines()


def test_a_dead_peer_under_torchrun_is_named_by_its_symptom_not_gloos_paragraph(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, lines = _report(RuntimeError(GLOO), capsys)
    assert code == 1
    assert (
        lines[0]
        == "error: lost contact with another process of this run (Connection reset by peer)"
    )
    assert lines[1].startswith("hint: that process failed or was stopped")
    assert "GLHF" not in "\n".join(lines)


def test_the_same_error_outside_torchrun_is_an_internal_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code, lines = _report(RuntimeError(GLOO), capsys)
    assert code == 1
    assert lines[0].startswith("error: internal error: RuntimeError: [/__w/pytorch")
    assert lines[1] == "hint: rerun with --debug and report it"


def _torchrun(
    monkeypatch: pytest.MonkeyPatch, rank: int, local_rank: int, world: int, per_machine: int
) -> None:
    for name, value in (
        ("RANK", rank),
        ("LOCAL_RANK", local_rank),
        ("WORLD_SIZE", world),
        ("LOCAL_WORLD_SIZE", per_machine),
    ):
        monkeypatch.setenv(name, str(value))


def test_an_error_of_the_options_is_reported_once_per_machine_until_the_ranks_compared(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = ConfigError("teacher weights file /w/t.pt not found", "check the path")
    host = socket.gethostname()
    # One machine: every process has the same files; rank 0 says it for all.
    _torchrun(monkeypatch, rank=1, local_rank=1, world=2, per_machine=2)
    assert _report(missing, capsys) == (2, [])
    # The first process of a second machine: its files may differ from rank 0's (it may be
    # the only one missing this file, and rank 0 would only wait for it), so it says so.
    _torchrun(monkeypatch, rank=2, local_rank=0, world=4, per_machine=2)
    code, lines = _report(missing, capsys)
    assert code == 2
    assert lines == [
        f"error: rank 2 on {host}: teacher weights file /w/t.pt not found",
        "hint: check the path",
    ]
    _torchrun(
        monkeypatch, rank=3, local_rank=1, world=4, per_machine=2
    )  # its machine's first says it
    assert _report(missing, capsys) == (2, [])
    # Once every rank found the others' inputs the same, rank 0's report stands for all.
    monkeypatch.setattr(ui, "_compared", True)
    _torchrun(monkeypatch, rank=2, local_rank=0, world=4, per_machine=2)
    assert _report(missing, capsys) == (2, [])
    # Errors that are not alike on every rank are each process's own, named by its rank.
    code, lines = _report(DataError("cannot decode x.png"), capsys)
    assert (code, lines[0]) == (2, f"error: rank 2 on {host}: cannot decode x.png")
    _torchrun(monkeypatch, rank=0, local_rank=0, world=4, per_machine=2)
    assert _report(missing, capsys)[1][0] == "error: teacher weights file /w/t.pt not found"
