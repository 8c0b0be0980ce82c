"""Status, warning and error lines print their text as given, brackets and all."""

from __future__ import annotations

import pytest

from kdpipe import ui


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
