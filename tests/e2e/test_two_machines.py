"""One torchrun job over two "machines": two launchers on this one (`--nnodes 2`), each with
its own command line and cache, as two nodes of a cluster have. Processes started with other
inputs, or one whose own files are missing, stop the whole job at once, and both machines'
logs say why."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import kdpipe
from tests.ranks import free_port

SOURCE = Path(kdpipe.__file__).parent

ARGS = ("run", "--teacher", "resnet18", "--student", "resnet18", "--image-size", "16", "--quiet")


def _launch(
    node: int, port: int, tmp: Path, extra: tuple[str, ...], out: str = "run"
) -> subprocess.Popen:
    env = {**os.environ, "KDPIPE_CACHE": str(tmp / f"cache{node}"), "COLUMNS": "400"}
    env["OMP_NUM_THREADS"] = "1"  # two "machines" share these cores: 2 x 2 threads thrash
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"),
        *("--node-rank", str(node), "--nproc-per-node", "1"),
        *("--master-addr", "127.0.0.1", "--master-port", str(port)),
        *("-m", "kdpipe", *ARGS, "--out", str(tmp / out), *extra),
    ]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


def _job(
    tmp: Path, extra: tuple[str, ...] = (), extra_on_1: tuple[str, ...] = (), out: str = "run"
):  # type: ignore[no-untyped-def]
    """Both machines' launchers, waited for: [(return code, stderr on one line)] by node."""
    port = free_port()
    nodes = [_launch(0, port, tmp, extra, out), _launch(1, port, tmp, extra + extra_on_1, out)]
    logs = []
    for proc in nodes:
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # before: node 0 waited for node 1 (for 30 min)
            for p in nodes:
                p.kill()
            pytest.fail("a node was still waiting after 300 s")
        logs.append((proc.returncode, " ".join(err.split())))
    return logs


def test_two_machines_with_a_cache_each_train_together_and_reuse_rank_0s(tmp_path: Path) -> None:
    # Only rank 0 keeps the teacher and the teacher-logit table a job makes, so machine 1's
    # cache never holds them: a later job reused them only if every rank's cache did.
    short = ("--teacher-epochs", "1", "--epochs", "1", "--batch-size", "64", "--until", "distill")
    for out in ("first", "second"):
        for node, (code, log) in enumerate(_job(tmp_path, short, out=out)):
            assert code == 0, (out, node, log[-2000:])
            assert "error" not in log, (out, node, log[-2000:])
            # inputs compared alike: rank 0's lines speak for both machines
            assert node == 0 or "warning" not in log, log[-2000:]
    teacher = json.loads((tmp_path / "second" / "teacher" / "metrics.json").read_text())
    distill = json.loads((tmp_path / "second" / "distill" / "metrics.json").read_text())
    assert teacher["source"] == "cache"  # not trained again
    assert distill["teacher_cache_source"] == "disk"  # nor the table computed again
    assert not (tmp_path / "cache1" / "teachers").exists()


@pytest.mark.parametrize("case", ["other epochs", "weights missing there"])
def test_a_node_that_differs_stops_the_job_and_both_logs_say_why(tmp_path: Path, case: str) -> None:
    host = socket.gethostname()
    missing = tmp_path / "teacher.pt"
    if case == "other epochs":
        extra = ("--epochs", "3")
        said = (
            "error: the processes of this run were started with different inputs: rank 1 on "
            f"{host} differs from rank 0 in distill.train.epochs: 3 on rank 1, 8 on rank 0"
        )
    else:  # node 0 runs without the option: its own check passes
        extra = ("--teacher-weights", str(missing))
        said = f"error: rank 1 on {host}: --teacher-weights file {missing} does not exist"
    logs = _job(tmp_path, extra_on_1=extra)
    for node, (code, log) in enumerate(logs):
        assert code != 0, (node, log[-2000:])
        assert log.count(said) == 1, (node, log[-2000:])  # once in each machine's log
        assert f'File "{SOURCE}' not in log  # no traceback through kdpipe (torchrun's own stays)
    assert not (tmp_path / "run").exists()  # refused before anything was written
