"""One `kdpipe run` per run directory: a second one is refused while the first lives, and a
lock whose holder was killed blocks nothing."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdpipe.core.errors import ConfigError
from kdpipe.core.runs import refuse_foreign_dir
from kdpipe.parallel import runlock
from kdpipe.parallel.runlock import LOCK_NAME, RunLock

HOLD = """
import sys, time
from pathlib import Path
from kdpipe.parallel.runlock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # starts processes
def test_a_held_directory_is_refused_naming_the_holder_and_freed_by_its_death(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError) as refused:
            RunLock(tmp_path).acquire()
        here = socket.gethostname()
        assert f"in use by another kdpipe run (pid {holder.pid} on {here})" in str(refused.value)
        os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait(timeout=30)
        with RunLock(tmp_path):  # the rerun that resumes the killed run gets in
            assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()} on {here}\n"
            with pytest.raises(ConfigError):
                RunLock(tmp_path).acquire()  # a second holder, even in this process
        with RunLock(tmp_path):  # released at the end of the block
            pass
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_directory_holding_only_a_stale_lock_is_not_someone_elses(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("12345\n")  # a run killed before it wrote config.yaml
    refuse_foreign_dir(tmp_path, forced=False)
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="not a kdpipe run"):
        refuse_foreign_dir(tmp_path, forced=False)


@pytest.mark.slow  # starts processes
def test_forked_children_do_not_keep_the_lock(tmp_path: Path) -> None:
    """DataLoader workers are forked; one that outlives its run must not hold the directory."""
    lock = RunLock(tmp_path)
    lock.acquire()
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: lives on after the run lets go
        os.write(started, b"1")  # fork's hooks have run by now
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"1"
        lock.release()
        with RunLock(tmp_path):  # free although the child still runs
            pass
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)


def test_a_filesystem_without_locks_is_used_unlocked_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(runlock.fcntl, "flock", no_locks)
    with RunLock(tmp_path):
        pass
    warning = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "cannot lock" in warning and "would not be detected" in warning
    RunLock(tmp_path).acquire(warn=False)  # the CLI's early probe says nothing
    assert capsys.readouterr().err == ""
