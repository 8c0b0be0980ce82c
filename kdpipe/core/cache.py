"""$KDPIPE_CACHE (default ~/.cache/kdpipe): what any run can reuse — trained teachers, their
ONNX exports, teacher-logit tables, image checks. One discipline for every entry: its place
is its kind and a fingerprint of everything that decides it (`entry`); it is read back only
whole, and one that cannot be used is said and made again (`read_back`); and a cache that
cannot take a new entry (a read-only home, a full disk) costs the reuse, never the run
(`keep`). Every file in it is written atomically by the caller's writer."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from kdpipe.core import ui
from kdpipe.core.errors import first_line

T = TypeVar("T")


def root() -> Path:
    return Path(os.environ.get("KDPIPE_CACHE", Path.home() / ".cache" / "kdpipe"))


def entry(kind: str, name: str) -> Path:
    """Where the entry `name` (a fingerprint, with a readable prefix) of `kind` lives."""
    return root() / kind / name


def read_back(what: str, where: str, again: str, read: Callable[[], T]) -> T | None:
    """`read()`'s result, or None (said, with what happens instead) where it cannot be used."""
    try:
        return read()
    except Exception as e:  # noqa: BLE001 - a cache file may hold anything: made again, never trusted
        ui.warn(f"{what}: ignoring {where} ({first_line(e)}); {again}")
        return None


def keep(what: str, again: str, write: Callable[[], object]) -> bool:
    """Run `write`; a cache that cannot take it is said, and the run goes on."""
    try:
        write()
    except OSError as e:
        ui.warn(
            f"{what} not kept in the cache {root()} ({e.strerror or e}), so later runs "
            f"{again}; point KDPIPE_CACHE at a writable folder"
        )
        return False
    return True
