"""The machine record every result carries: enough to tell two CPUs a VM names alike apart."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from kdpipe.profile import environment


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="no /proc/cpuinfo here")
def test_cpu_identity_and_features_come_from_cpuinfo() -> None:
    text = Path("/proc/cpuinfo").read_text()
    env = environment.describe(1)
    assert env["cpu"] and env["threads"] == 1
    if platform.machine() in ("x86_64", "AMD64"):
        family = next(ln.split(":")[1].strip() for ln in text.splitlines() if "cpu family" in ln)
        assert env["cpu_id"] and f"family {family} " in env["cpu_id"]
    flags = set(
        next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "").split()
    )
    assert env["cpu_features"] == [f for f in environment.CPU_FEATURES if f in flags]
