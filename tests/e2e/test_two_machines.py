"""One torchrun job over two "machines": two launchers on this one (`--nnodes 2`), each with
its own command line and cache, as two nodes of a cluster have. Processes started with other
inputs, or one whose own files are missing, stop the whole job at once, and both machines'
logs say why."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import kdpipe
from tests.unit.ranks import free_port

SOURCE = Path(kdpipe.__file__).parent

ARGS = ("run", "--teacher", "resnet18", "--student", "resnet18", "--image-size", "16", "--quiet")


def _launch(node: int, port: int, tmp: Path, extra: tuple[str, ...]) -> subprocess.Popen:
    env = {**os.environ, "KDPIPE_CACHE": str(tmp / f"cache{node}"), "COLUMNS": "400"}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"),
        *("--node-rank", str(node), "--nproc-per-node", "1"),
        *("--master-addr", "127.0.0.1", "--master-port", str(port)),
        *("-m", "kdpipe", *ARGS, "--out", str(tmp / "run"), *extra),
    ]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)


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
    port = free_port()
    nodes = [_launch(0, port, tmp_path, ()), _launch(1, port, tmp_path, extra)]
    logs = []
    for proc in nodes:
        try:
            _, err = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:  # before: node 0 waited for node 1 (for 30 min)
            for p in nodes:
                p.kill()
            pytest.fail("a node was still waiting after 180 s")
        logs.append(" ".join(err.split()))
    for node, (proc, log) in enumerate(zip(nodes, logs, strict=True)):
        assert proc.returncode != 0, (node, log[-2000:])
        assert log.count(said) == 1, (node, log[-2000:])  # once in each machine's log
        assert f'File "{SOURCE}' not in log  # no traceback through kdpipe (torchrun's own stays)
    assert not (tmp_path / "run").exists()  # refused before anything was written
