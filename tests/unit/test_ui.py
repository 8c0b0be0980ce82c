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
