"""Shared fixtures: an isolated teacher cache, small deterministic threads, temporary files
kept where pytest keeps its own."""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator

import pytest
import torch

# A suite started as a background job of a script (`bash -c '... &'`: no job control) inherits
# SIGINT ignored, as POSIX shells leave it for such jobs, and kdpipe rightly keeps a signal it
# was started ignoring ignored; three Ctrl-C tests then failed. They test Ctrl-C: give this
# process, and through exec every process it starts, Python's usual SIGINT back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Trained teachers are cached across runs; tests must never see a user's cache.
    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "kdpipe-cache"))


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary folders of this process and every process it starts (multiprocessing's
    pymp-* of loader workers and fork servers, torchelastic's, kdpipe's launcher's) go under
    pytest's base temp, which pytest rotates, not /tmp: tests kill processes on purpose, and a
    killed process never removes its folder (3 pymp-* left in /tmp per suite before)."""
    tmp = tmp_path_factory.mktemp("tmp")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(tmp)
    yield
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]
    tempfile.tempdir = saved[1]


@pytest.fixture(autouse=True, scope="session")
def _threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _loud_again() -> Iterator[None]:
    # In-process CLI calls with --quiet must not silence the tests that follow.
    yield
    from kdpipe.core import ui

    ui.set_quiet(False)


# OpenVINO stays out of pytest's own process, except in the tests marked `openvino`, which
# run last: after in-process OpenVINO use (a run with a user's model file among them), the next
# torch work of pytest's process ended it with SIGSEGV, a fork or a training step alike, while
# with OpenVINO disabled the same tests passed (docs/architecture.md). Runs the tests start as
# processes of their own use OpenVINO as users' do.
OPENVINO_KEPT_OUT = "OpenVINO is kept out of pytest's own process (tests/conftest.py)"


@pytest.fixture(autouse=True)
def _openvino_only_where_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("openvino") is None:
        from kdpipe.runtimes import openvino

        monkeypatch.setattr(openvino, "unavailable_reason", lambda: OPENVINO_KEPT_OUT)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e trains models or starts processes: `slow`, so that
    `pytest -m "not slow"` is the quick loop. Tests that use OpenVINO in this process last."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)
    items[:] = sorted(items, key=lambda i: i.get_closest_marker("openvino") is not None)
