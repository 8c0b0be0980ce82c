"""Shared fixtures: an isolated teacher cache, small deterministic threads."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trained teachers are cached across runs; tests must never see a user's cache.
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "kdpipe-cache"))


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _loud_again() -> Iterator[None]:
    # In-process CLI calls with --quiet must not silence the tests that follow.
    yield
    from kdpipe import ui

    ui.set_quiet(False)
