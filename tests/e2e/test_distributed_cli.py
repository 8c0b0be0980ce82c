"""`kdpipe run --nproc 2`: torch's elastic launcher starts two gloo ranks that train together;
rank 0 alone writes the run directory and reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kdpipe.core.errors import ConfigError
from kdpipe.parallel.runlock import LOCK_NAME, RunLock
from tests.e2e.helpers import kdpipe, module_dir

ARGS = [
    *("run", "--nproc", "2", "--teacher", "resnet18", "--student", "mobilenet_v3_small"),
    *("--image-size", "16", "--teacher-epochs", "1", "--epochs", "2", "--batch-size", "64"),
    *("--checkpoint-every", "3", "--precision", "fp32", "--quiet"),
    "--sync-bn",  # BatchNorm over both ranks' rows (tests/unit/test_distributed.py)
]


@dataclass
class TwoRanks:
    out: Path
    proc: subprocess.CompletedProcess
    env: dict[str, str]  # its teacher cache holds the teacher this run trained
    left_in_tmp: list[str]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoRanks]:
    """One `--nproc 2` run to the export, which the restart test reuses as its reference."""
    with module_dir(tmp_path_factory, "two-ranks") as path:
        tmp = path / "tmp"  # the launcher's log folders must not pile up in /tmp
        tmp.mkdir()
        cache = str(path / "cache")
        env = {**os.environ, "KDPIPE_CACHE": cache, "TMPDIR": str(tmp), "COLUMNS": "200"}
        out = path / "run"
        proc = kdpipe(*ARGS, "--until", "export", "--out", str(out), env=env)
        left = [p.name for p in tmp.iterdir() if p.name.startswith(("torchelastic_", "kdpipe-"))]
        yield TwoRanks(out, proc, env, left)


def test_nproc_2_trains_on_two_ranks_and_writes_once(two_ranks: TwoRanks) -> None:
    out, proc = two_ranks.out, two_ranks.proc
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("stopped after export") == 1  # rank 1 stays silent
    assert "--sync-bn applies" not in proc.stderr  # the note for one process
    assert (out / "export" / "student.onnx").is_file()
    for stage in ("teacher", "distill"):
        assert (out / stage / "stage.json").is_file()
        assert len((out / stage / "log.jsonl").read_text().splitlines()) == (
            1 if stage == "teacher" else 2
        )
    metrics = json.loads((out / "distill" / "metrics.json").read_text())
    assert metrics["teacher_cache"] is True and metrics["history"][-1]["epoch"] == 2
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not two_ranks.left_in_tmp


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def free(out: Path) -> bool:
    """Whether a rerun would get the run directory's lock now."""
    try:
        with RunLock(out):
            return True
    except ConfigError:
        return False


def test_workers_die_with_a_killed_launcher_and_free_the_run(tmp_path: Path) -> None:
    """SIGKILL to `kdpipe run --nproc 2` (a cancelled CI job) must not leave its workers
    training on, orphaned, in the run directory; the rerun then finds it free."""
    out = tmp_path / "run"
    # TMPDIR: a launcher killed with SIGKILL cannot remove its log folder; keep it out of /tmp
    env = {**os.environ, "KDPIPE_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    args = ("run", "--nproc", "2", "--teacher", "resnet18", "--out", str(out), "--quiet")
    launcher = subprocess.Popen(  # 200 teacher epochs: the kill always lands in training
        [sys.executable, "-m", "kdpipe", *args, "--teacher-epochs", "200"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    worker = 0
    try:
        lock = out / LOCK_NAME
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not worker:  # rank 0 locks the run directory
            text = lock.read_text().strip() if lock.is_file() else ""
            pid = text.split(" ")[0]
            worker = int(pid) if pid.isdigit() and int(pid) != launcher.pid else 0
            time.sleep(0.5)
        assert worker, "rank 0 never locked the run directory"
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while not free(out) and time.monotonic() < deadline:
            time.sleep(0.2)  # a dying process lets go of its files as its last thread exits
        assert free(out), "the run directory is still held after its launcher was killed"
        assert not alive(worker), "rank 0 trains on after its launcher was killed"
    finally:
        launcher.kill()
        launcher.wait(timeout=30)
        if worker and alive(worker):  # never leave a 200-epoch orphan behind
            os.kill(worker, signal.SIGKILL)


def test_sigterm_to_the_launcher_stops_both_ranks_at_a_checkpoint(tmp_path: Path) -> None:
    """A scheduler preempting `kdpipe run --nproc 2` signals the launcher, which passes SIGTERM
    on: the ranks stop together at a checkpointed step; one line says so; exit 143."""
    out = tmp_path / "run"
    env = {**os.environ, "KDPIPE_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    args = ("run", "--nproc", "2", "--teacher", "resnet18", "--out", str(out), "--quiet")
    launcher = subprocess.Popen(  # 200 teacher epochs: the signal always lands in training
        [sys.executable, "-m", "kdpipe", *args, "--teacher-epochs", "200", "--image-size", "16"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        log = out / "teacher" / "log.jsonl"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not log.is_file():
            time.sleep(0.2)  # rank 0 writes the log as training starts
        assert log.is_file(), "training never started"
        time.sleep(1.0)
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 143, stderr[-3000:]
    assert stderr.count("error: stopped by SIGTERM in teacher resnet18 after epoch") == 1, stderr
    assert "its checkpoint written" in stderr and "Traceback" not in stderr
    saved = torch.load(out / "teacher" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] >= 1  # a position both ranks agreed on
    assert free(out)


def test_max_restarts_recovers_a_killed_rank_and_ends_as_an_uninterrupted_run(
    tmp_path: Path, two_ranks: TwoRanks
) -> None:
    """Rank 1 killed mid-epoch (SIGKILL: out of memory, a lost machine): the launcher starts
    both ranks again, they resume from the last checkpoint, and the student equals the one of
    a run nobody killed."""
    assert two_ranks.proc.returncode == 0, two_ranks.proc.stderr[-3000:]
    fault = {"KDPIPE_FAULT": "step:8", "KDPIPE_FAULT_RANK": "1"}  # the teacher is cached now
    out = tmp_path / "restarted"
    env = {**two_ranks.env, **fault}
    restarted = kdpipe(
        *ARGS, "--until", "distill", "--max-restarts", "1", "--out", str(out), env=env
    )
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "exitcode: -9" in restarted.stderr  # rank 1 really was killed
    assert "internal error" not in restarted.stderr  # rank 0: "lost contact", not a bug
    reference = torch.load(two_ranks.out / "distill" / "student.pt", weights_only=True)
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    for name, tensor in reference.items():
        assert torch.equal(student[name], tensor), name
    assert len((out / "distill" / "log.jsonl").read_text().splitlines()) == 2
