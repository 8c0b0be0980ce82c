"""Killed runs resume where they stopped and end bit-identical to an uninterrupted run.

A CPU run is killed with SIGKILL (tests/faults) mid-epoch, between epochs and half-way
through writing a checkpoint; rerunning the same command resumes from the last complete
checkpoint. The student must equal the uninterrupted run's, tensor for tensor.

Only the runs that are killed or signalled need a process of their own; the reference runs and
the resumes run in this one (`kdpipe_here`: a new interpreter spends 4-10 s importing)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.e2e.helpers import kdpipe, kdpipe_here, module_dir
from tests.faults import injection as faults

ARGS = [
    *("run", "--teacher", "resnet18", "--student", "mobilenet_v3_small", "--image-size", "16"),
    *("--teacher-epochs", "1", "--epochs", "2", "--checkpoint-every", "4", "--until", "distill"),
    "--quiet",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with module_dir(tmp_path_factory, "cache") as path:
        yield {**os.environ, "KDPIPE_CACHE": str(path)}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, cache: dict[str, str]) -> dict:
    with module_dir(tmp_path_factory, "whole") as whole:
        out = whole / "run"
        proc = kdpipe(*ARGS, "--out", str(out), env=cache)
        assert proc.returncode == 0, proc.stderr[-2000:]
        checkpoints = out / "distill" / "checkpoints"
        assert not list(checkpoints.glob("*")), "checkpoints outlive the stage"
        return torch.load(out / "distill" / "student.pt", weights_only=True)


@pytest.mark.parametrize(
    "fault",
    ["step:6", "epoch:1", "checkpoint:2"],
    ids=["mid-epoch", "between-epochs", "during-checkpoint-write"],
)
def test_killed_run_resumes_bit_identical(
    fault: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache: dict[str, str],
    uninterrupted: dict,
) -> None:
    out = tmp_path / "run"
    killed = kdpipe(*ARGS, "--out", str(out), env={**cache, "KDPIPE_FAULT": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "distill" / "student.pt").exists()
    checkpoints = out / "distill" / "checkpoints"
    complete = checkpoints / "last.pt"
    # Whatever the kill left behind, the checkpoint file itself is whole.
    torch.load(complete, weights_only=True)
    resumed = kdpipe_here(capsys, *ARGS, "--out", str(out), env=cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert student.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(student[name], tensor), name
    assert not list(checkpoints.glob("*")) and not list(checkpoints.glob(".*"))
    log = (out / "distill" / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # one line per epoch, none duplicated by the resume


def test_a_damaged_last_checkpoint_resumes_from_the_one_before_bit_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache: dict[str, str], uninterrupted: dict
) -> None:
    # Killed after epoch 1's checkpoint (steps 4 and 8 were checkpointed before it); then one
    # bit of the last checkpoint changes on disk. torch.load would take it as it is.
    out = tmp_path / "run"
    killed = kdpipe(*ARGS, "--out", str(out), env={**cache, "KDPIPE_FAULT": "epoch:1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = out / "distill" / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    resumed = kdpipe_here(capsys, *ARGS, "--out", str(out), env=cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    err = " ".join(resumed.stderr.split())
    assert "fails its CRC-32 check" in err and "resuming from the checkpoint before it" in err
    assert "epoch 1 batch 8" in err  # the step-8 checkpoint, not a start from scratch
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert all(torch.equal(student[k], t) for k, t in uninterrupted.items())


@pytest.mark.parametrize(
    ("fault", "code", "where", "position"),
    [
        ("step:6:TERM", 143, "SIGTERM in distill mobilenet_v3_small (kd) after epoch 1 step 6", 6),
        ("epoch:1:INT", 130, "SIGINT in distill mobilenet_v3_small (kd) after epoch 1,", 0),
    ],
    ids=["sigterm-mid-epoch", "sigint-at-epoch-end"],
)
def test_a_signalled_run_checkpoints_where_it_stops_and_resumes_bit_identical(
    fault: str,
    code: int,
    where: str,
    position: int,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cache: dict[str, str],
    uninterrupted: dict,
) -> None:
    """SIGTERM (a scheduler preempting the job) or Ctrl-C: the step in progress finishes, its
    exact position is checkpointed (step 6, not the --checkpoint-every 4 one before it), one
    error line says so, the exit status is the shell's 128 + signal."""
    out = tmp_path / "run"
    stopped = kdpipe(*ARGS, "--out", str(out), env={**cache, "KDPIPE_FAULT": fault})
    assert stopped.returncode == code, stopped.stderr[-2000:]
    assert f"error: stopped by {where}" in " ".join(stopped.stderr.split())
    assert "hint: run the same command again to resume from there" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    saved = torch.load(out / "distill" / "checkpoints" / "last.pt", weights_only=True)
    assert (saved["epoch"], saved["batch"]) == ((1, 6) if position else (2, 0))
    resumed = kdpipe_here(capsys, *ARGS, "--out", str(out), env=cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    for name, tensor in uninterrupted.items():
        assert torch.equal(student[name], tensor), name


def test_a_sigterm_to_the_whole_job_with_loader_workers_still_stops_at_the_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache: dict[str, str], uninterrupted: dict
) -> None:
    """`scancel` (or a terminal's Ctrl-C) signals every process of the job, the DataLoader's
    workers too: a worker the SIGTERM ended made torch raise "DataLoader worker ... is killed
    by signal" in the training process (an internal error, no checkpoint of the position).
    Now the workers leave the stop to the training process."""
    out = tmp_path / "run"
    # the first worker sends the signal as it loads its first image, while training waits
    # for the batch (a worker the signal ended never delivered it) and the second is still
    # starting (data.loader.stops_held keeps it alive there)
    args = [*ARGS, "--workers", "2", "--out", str(out)]
    env = faults.environment({**cache, "KDPIPE_FAULT": "load:1:TERM:group"})
    proc = subprocess.run(  # a process group of its own: the signal must not reach pytest
        [sys.executable, "-m", "kdpipe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        start_new_session=True,
    )
    assert proc.returncode == 143, proc.stderr[-2000:]
    err = " ".join(proc.stderr.split())
    assert "stopped by SIGTERM in distill mobilenet_v3_small (kd) after epoch 1 step 1" in err
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    resumed = kdpipe_here(capsys, *args, env=cache)  # loader workers change no result
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert all(torch.equal(student[k], t) for k, t in uninterrupted.items())


def test_a_signal_as_training_ends_lets_the_stage_finish_and_stops_before_the_next(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache: dict[str, str], uninterrupted: dict
) -> None:
    """SIGTERM after the last step: the student is saved and its stage marked done, then the
    run stops before export; the rerun reuses the stage and only exports."""
    out = tmp_path / "run"
    args = [*ARGS, "--until", "export", "--precision", "fp32", "--out", str(out)]
    last = 2 * 9  # 2 epochs of 9 steps (1257 training images at batch 128, tails dropped)
    stopped = kdpipe(*args, env={**cache, "KDPIPE_FAULT": f"step:{last}:TERM"})
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "error: stopped by SIGTERM before the export stage" in stopped.stderr
    assert "hint: finished stages are kept" in stopped.stderr
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert all(torch.equal(student[k], t) for k, t in uninterrupted.items())
    assert not (out / "export").exists()
    done = (out / "distill" / "stage.json").stat().st_mtime_ns
    rerun = kdpipe_here(capsys, *args, env=cache)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "export" / "student.onnx").is_file()
    assert (out / "distill" / "stage.json").stat().st_mtime_ns == done  # reused, not retrained


@pytest.mark.parametrize(
    ("method", "extra", "resumes_at"),
    [
        # hint stage (1 epoch of 9 steps), then KD: step 13 is the KD stage's 4th, killed
        # before its checkpoint, so the resume starts the second stage from its boundary
        ("fitnet", [], "resuming from .* \\(stage 1 epoch 1 batch 0\\)"),
        # the assistant trains first (its own checkpoint file): killed in its second epoch
        ("takd", ["--assistant", "mobilenet_v3_small"], "resuming from .*assistants.*"),
        # the discriminator and its own optimizer are extras of the student's checkpoint
        ("adversarial", [], "resuming from .* \\(stage 0 epoch 2 batch 0\\)"),
    ],
    ids=["fitnet-second-stage", "takd-assistant", "adversarial-discriminator"],
)
def test_methods_with_stages_and_extras_resume_bit_identical(
    method: str,
    extra: list[str],
    resumes_at: str,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    cache: dict[str, str],
) -> None:
    args = [*ARGS, "--method", method, *extra]
    whole, out = tmp_path_factory.mktemp("whole") / "run", tmp_path_factory.mktemp("cut") / "run"
    assert kdpipe_here(capsys, *args, "--out", str(whole), env=cache).returncode == 0
    killed = kdpipe(*args, "--out", str(out), env={**cache, "KDPIPE_FAULT": "step:13"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = kdpipe_here(
        capsys, *[a for a in args if a != "--quiet"], "--out", str(out), env=cache
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert re.search(resumes_at, " ".join(resumed.stderr.split())), resumed.stderr[-2000:]
    expected = torch.load(whole / "distill" / "student.pt", weights_only=True)
    student = torch.load(out / "distill" / "student.pt", weights_only=True)
    assert student.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(student[name], tensor), name
