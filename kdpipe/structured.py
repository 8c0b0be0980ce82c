"""Reading the YAML, TOML and JSON files users hand kdpipe (configs, budgets, reports) without
trusting them: yaml.safe_load executes nothing, but two short files still took the CLI down.

- Aliases: ten lines of `&a [*b, *b, ...]` build a list that refers to one object many times
  over; safe_load is linear, but whatever walks it afterwards (validation, a repr in an error
  line) met 10^12 values: the process grew past 4 GB in a minute. A document may expand to
  MAX_VALUES values at most, and may not refer to itself.
- Nesting: `[[[[...]]]]` deep enough raised RecursionError in every parser (an internal error).
"""

from __future__ import annotations

import json
from typing import Any

import tomllib
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from yaml.nodes import MappingNode, Node, SequenceNode

from kdpipe.errors import first_line

MAX_VALUES = 100_000  # kdpipe's own files hold hundreds


class ParseError(ValueError):
    """The file is not valid YAML / TOML / JSON, or too large once expanded."""


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
