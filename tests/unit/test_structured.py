"""Config, budgets and report files parsed without trusting them (kdpipe.core.structured)."""

from __future__ import annotations

import pytest

from kdpipe.core.structured import MAX_VALUES, ParseError, parse


def test_yaml_aliases_are_counted_as_expanded_and_legit_ones_work() -> None:
    text = "base: &b {lr: 0.1, epochs: 3}\nteacher:\n  <<: *b\n  epochs: 5\nsame: *b\n"
    assert parse(text, "yaml") == {
        "base": {"lr": 0.1, "epochs": 3},
        "teacher": {"lr": 0.1, "epochs": 5},
        "same": {"lr": 0.1, "epochs": 3},
    }
    # Every node counts once per time it is reached: the mapping, 2 keys, the list of n scalars
    # (n + 1) and the list naming it k times (1 + k (n + 1)): 1004 + 1000 k for n = 999.
    n = 999
    k = (MAX_VALUES - 1004) // (n + 1)  # 98: 99004 values; 99 would be 100004
    items = ", ".join(["0"] * n)
    fits = f"a: &a [{items}]\nb: [{', '.join(['*a'] * k)}]\n"
    assert len(parse(fits, "yaml")["b"]) == k
    over = f"a: &a [{items}]\nb: [{', '.join(['*a'] * (k + 1))}]\n"
    with pytest.raises(ParseError, match=f"more than {MAX_VALUES} values"):
        parse(over, "yaml")


def test_a_document_that_refers_to_itself_is_refused() -> None:
    with pytest.raises(ParseError, match="refers to itself .*line 1"):
        parse("a: &a [1, *a]\n", "yaml")


@pytest.mark.parametrize(
    "fmt,text",
    [
        ("yaml", "a: " + "[" * 3000 + "]" * 3000),
        ("json", "[" * 100_000 + "]" * 100_000),
        ("toml", "a = " + "[" * 100_000 + "]" * 100_000),
    ],
)
def test_deep_nesting_is_a_parse_error_not_a_crash(fmt: str, text: str) -> None:
    with pytest.raises(ParseError, match="nested too deeply"):
        parse(text, fmt)


def test_syntax_errors_keep_the_parsers_first_line() -> None:
    with pytest.raises(ParseError, match="while parsing a flow sequence"):
        parse("a: [1, 2\n", "yaml")
    with pytest.raises(ParseError, match="Expecting"):
        parse("{1: 2}", "json")
    assert parse('a = 1\n[b]\nc = "x"\n', "toml") == {"a": 1, "b": {"c": "x"}}
