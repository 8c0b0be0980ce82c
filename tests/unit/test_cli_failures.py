"""How exceptions that are not kdpipe's own become one line and an exit code (cli.errors_reported)."""

from __future__ import annotations

import pytest
import typer

from kdpipe.cli import errors_reported

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
