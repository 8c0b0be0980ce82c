"""The shape of kdpipe's code: functions that fit on a screen, typer commands that only parse
options and call the API, and imports that never go round in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[2] / "kdpipe"
LONGEST_FUNCTION = 80
LONGEST_COMMAND_BODY = 30


def _functions() -> list[tuple[Path, ast.FunctionDef]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((path, node))  # type: ignore[arg-type]
    return out


def _is_command(path: Path, fn: ast.FunctionDef) -> bool:
    """A typer command: a function of kdpipe/cli whose parameters are declared options."""
    annotations = [ast.unparse(a.annotation) for a in fn.args.args if a.annotation]
    return path.parent.name == "cli" and any(
        "Annotated" in a or a.endswith("Opt") for a in annotations
    )


def _body_lines(fn: ast.FunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0  # type: ignore[operator]


def test_functions_fit_on_a_screen_and_commands_only_call_the_api() -> None:
    too_long = []
    for path, fn in _functions():
        name = f"{path.relative_to(PACKAGE.parent)}:{fn.lineno} {fn.name}"
        if _is_command(path, fn):
            if _body_lines(fn) > LONGEST_COMMAND_BODY:
                too_long.append(f"{name}: command body {_body_lines(fn)} lines")
        elif fn.end_lineno - fn.lineno + 1 > LONGEST_FUNCTION:  # type: ignore[operator]
            too_long.append(f"{name}: {fn.end_lineno - fn.lineno + 1} lines")  # type: ignore[operator]
    assert too_long == []


def test_the_rule_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST_FUNCTION))
    fn = ast.parse(f"def f():\n{body}\n").body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert fn.end_lineno - fn.lineno + 1 > LONGEST_FUNCTION  # type: ignore[operator]
    assert not _is_command(tmp_path / "cli" / "x.py", fn)


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("kdpipe")
    cycles = [
        m
        for m in graph.modules
        for imported in graph.find_modules_directly_imported_by(m)
        if graph.chain_exists(importer=imported, imported=m)
    ]
    assert cycles == []
