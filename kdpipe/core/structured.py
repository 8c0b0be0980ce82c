"""Reading the YAML, TOML and JSON files users hand kdpipe (configs, budgets, reports) without
trusting them: yaml.safe_load executes nothing, but two short files still took the CLI down.

- Aliases: ten lines of `&a [*b, *b, ...]` build a list that refers to one object many times
  over; safe_load is linear, but whatever walks it afterwards (validation, a repr in an error
  line) met 10^12 values: the process grew past 4 GB in a minute. A document may expand to
  MAX_VALUES values at most, and may not refer to itself.
- Nesting: `[[[[...]]]]` deep enough raised RecursionError in every parser (an internal error).
- Size: `--config /dev/zero` read until memory ran out, and a data file passed by mistake
  was read whole before the parser failed on it. At most `limit` bytes are read.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from kdpipe.core.errors import ConfigError, first_line

MAX_VALUES = 100_000  # kdpipe's own files hold hundreds
MAX_BYTES = 64 << 20  # reports and run files; a long run's report.json is ~100 KB
SETTINGS_BYTES = 1 << 20  # configs and budgets, written by hand


class ParseError(ValueError):
    """The file is not valid YAML / TOML / JSON, or too large once expanded."""

    hint = "fix its syntax"


class TooLarge(ParseError):
    """More bytes than kdpipe reads of such a file: most likely another file."""

    hint = "pass the right file"


def read_text(path: Path, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of `path`, of at most `limit` bytes (a ParseError beyond; read in one
    bounded call, so a pipe — `--config <(...)` — works and an endless device stops).
    OSError and UnicodeDecodeError (a ValueError) go to the caller."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    # Text first: a binary file (weights passed as a config) is "not text" at any size.
    text = codecs.getincrementaldecoder("utf-8")().decode(data[:limit], final=len(data) <= limit)
    if len(data) > limit:
        raise TooLarge(f"it is larger than {limit / (1 << 20):g} MiB; is it the right file?")
    return text


def read_settings(path: Path, what: str, formats: str) -> Any:
    """A hand-written settings file (`what`: "config file", "budgets file") parsed by its
    suffix; unreadable, not text, invalid or too large is a ConfigError naming it."""
    try:
        return parse(read_text(path, SETTINGS_BYTES), format_of(path.suffix))
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}", "check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} {path} is not text (not UTF-8)", f"pass a {formats} file"
        ) from None
    except ParseError as e:
        raise ConfigError(f"{what} {path} is not valid: {e}", e.hint) from None


def parse(text: str, fmt: str) -> Any:
    """`text` in format "yaml", "toml" or "json" as plain Python values."""
    try:
        if fmt == "toml":
            return tomllib.loads(text)
        if fmt == "json":
            return json.loads(text)
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise ParseError("it is nested too deeply") from None
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ParseError(first_line(e, 1000)) from None


class Open(BaseModel):
    """A checked view of the parts of a file kdpipe reads; other keys are left alone."""

    model_config = ConfigDict(extra="allow")


def is_number(value: object) -> bool:
    """An int or float (NaN and infinities included), not a bool, string, list or null."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def first_problem(e: ValidationError) -> str:
    """The first thing wrong in a file checked against an `Open` model, as `where: what`."""
    err = e.errors()[0]
    return f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}"


def format_of(suffix: str) -> str:
    return "toml" if suffix == ".toml" else "json" if suffix == ".json" else "yaml"


class _BoundedLoader(yaml.SafeLoader):
    def construct_document(self, node: Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: Node) -> None:
    """Count the values `root` expands to (an alias counts what it names, each time), without
    expanding it: a post-order walk with each node's total kept."""
    totals: dict[int, int] = {}
    open_nodes: set[int] = set()  # the current node's ancestors: meeting one is a cycle
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            totals[id(node)] = 1 + sum(totals[id(c)] for c in _children(node))
            if totals[id(node)] > MAX_VALUES:
                raise ParseError(f"it expands to more than {MAX_VALUES} values (YAML aliases)")
        elif id(node) not in totals:
            if id(node) in open_nodes:
                raise ParseError(
                    f"it refers to itself (a YAML alias, line {node.start_mark.line + 1})"
                )
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
