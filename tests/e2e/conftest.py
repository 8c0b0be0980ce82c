"""One tiny real run shared by the end-to-end tests (it trains, exports and profiles)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import TINY, kdpipe


@pytest.fixture(scope="session")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float, dict]:
    out = tmp_path_factory.mktemp("run") / "r"
    env = {**os.environ, "KDPIPE_CACHE": str(out.parent / "cache")}
    start = time.perf_counter()
    proc = kdpipe("run", *TINY, "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, time.perf_counter() - start, env
