"""A user's own model: `path/to/file.py:Name`, where Name is an nn.Module class or a function
returning one.

Name is called with `num_classes=K` when its signature names that parameter; otherwise with
no arguments, and its last Linear layer is resized to K (as for torchvision models). The file
is imported as Python imports a script — it runs that file's code, so name only files you
trust (weights, by contrast, are never unpickled). Its folder is on `sys.path` while it is
imported, so it may import modules beside it. Stage fingerprints include the file's hash:
editing it retrains what depends on it.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from kdpipe.core.config import file_model
from kdpipe.core.errors import ModelError, did_you_mean
from kdpipe.core.runs import file_sha256
from kdpipe.models.heads import replace_head


def is_file_model(arch: str) -> bool:
    return file_model(arch) is not None


def builder(arch: str) -> Callable[..., object]:
    """Import the file of `arch` (once per content) and return the class or function it names."""
    found = file_model(arch)
    if found is None:
        raise ModelError(f"'{arch}' is not a model file", "write it as path/to/file.py:ClassName")
    path, attr = found
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist", "check the path")
    module = _import(path)
    obj = getattr(module, attr, None)
    if obj is None:
        names = [n for n, v in vars(module).items() if _is_model_builder(v)]
        raise ModelError(
            f"model file {path} defines no '{attr}'",
            did_you_mean(attr, names) or f"its nn.Module classes: {', '.join(names) or 'none'}",
        )
    if not callable(obj):
        raise ModelError(f"{arch} is not a class or function", "name an nn.Module subclass")
    return obj


def build(arch: str, num_classes: int) -> nn.Module:
    """Construct the model `arch` names with a `num_classes` output."""
    make = builder(arch)
    takes_k = "num_classes" in _parameters(make)
    call = f"{arch.rpartition(':')[2]}({f'num_classes={num_classes}' if takes_k else ''})"
    try:
        model = make(num_classes=num_classes) if takes_k else make()
    except Exception as e:  # the user's constructor: any error is theirs to fix
        raise ModelError(
            f"building {arch} failed: {type(e).__name__}: {str(e)[:160]}",
            f"fix the model file; kdpipe calls {call}",
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"{arch} returned a {type(model).__name__}, not a torch nn.Module",
            "name an nn.Module subclass or a function that returns one",
        )
    if not takes_k:
        replace_head(model, num_classes)
    return model


def sources(*archs: str) -> list[str]:
    """`file.py:Name@sha256` for each file model among `archs` (none for torchvision names):
    stage fingerprints add these so that editing a model file invalidates what it built."""
    out = []
    for arch in archs:
        found = file_model(arch)
        if found and found[0].is_file():
            out.append(f"{arch}@{file_sha256(found[0])}")
    return out


def _import(path: Path) -> ModuleType:
    # One module per file content: a second build reuses it, an edited file is imported anew.
    name = f"kdpipe_user_model_{file_sha256(path)[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import model file {path}", "name a Python source file")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file: report where it broke, not our traceback
        del sys.modules[name]
        if isinstance(e, SyntaxError) and e.filename:  # in this file or one it imports
            where = f"{e.filename}:{e.lineno}"
        else:
            line = _error_line(e, path)
            where = f"{path}:{line}" if line else str(path)
        raise ModelError(
            f"importing model file {where} failed: {type(e).__name__}: {str(e)[:160]}",
            "fix the file; `python FILE` shows the same error",
        ) from None
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def _error_line(e: BaseException, path: Path) -> int | None:
    """The line of `path` where `e` was raised, from its traceback."""
    tb, line = e.__traceback__, None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve() == path.resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _parameters(obj: Callable[..., object]) -> set[str]:
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):  # some builtins have no signature
        return set()


def _is_model_builder(v: object) -> bool:
    return (inspect.isclass(v) and issubclass(v, nn.Module)) or inspect.isfunction(v)
