"""Processes of one torchrun job started with different inputs are refused, on every process,
before anything is written, with one line naming the first rank that differs and what."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from kdpipe import api, models
from kdpipe.api import pipeline
from kdpipe.core.config import RunConfig
from kdpipe.core.errors import ConfigError, KdpipeError
from kdpipe.data import load_data
from kdpipe.stages import inputs as rank_inputs
from tests.ranks import two_ranks


@pytest.fixture(scope="module")
def digits():  # type: ignore[no-untyped-def]
    return load_data(RunConfig().data, 0)


def _cfg(**sections: object) -> RunConfig:
    return RunConfig.model_validate(sections)


def _differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    assert a.keys() == b.keys()  # the names compared never depend on the options given
    return sorted(k for k in a if a[k] != b[k])


def test_describe_names_what_differs_and_leaves_per_machine_options(digits, tmp_path: Path):  # type: ignore[no-untyped-def]
    base = rank_inputs.describe(_cfg(), digits)
    epochs = rank_inputs.describe(_cfg(distill={"train": {"epochs": 3}}), digits)
    assert _differing(base, epochs) == ["distill.train.epochs"]
    assert epochs["distill.train.epochs"] == "3"
    # A --set dict is one value: other keys give the same names, one difference.
    params = rank_inputs.describe(_cfg(distill={"params": {"T": 2.0}}), digits)
    assert _differing(base, params) == ["distill.params"]
    # Loader workers, export and profile options may differ by machine.
    local = _cfg(data={"workers": 3}, profile={"threads": 1}, export={"calibration_samples": 8})
    assert _differing(base, rank_inputs.describe(local, digits)) == []
    # The same path with other bytes (another copy on another machine) is a difference.
    weights = tmp_path / "teacher.pt"
    torch.save({"w": torch.zeros(3)}, weights)
    cfg = _cfg(teacher={"weights": str(weights)})
    first = rank_inputs.describe(cfg, digits)
    torch.save({"w": torch.ones(3)}, weights)
    assert _differing(first, rank_inputs.describe(cfg, digits)) == ["teacher weights file"]
    assert first["teacher weights file"].startswith("sha256 ")
    # Another copy of the data: its sizes are shown, its other facts compared by digest.
    fewer = load_data(RunConfig().data, 0)
    fewer.info.sizes = {**fewer.info.sizes, "train": 1250}
    assert _differing(base, rank_inputs.describe(_cfg(), fewer)) == ["data", "data details"]
    assert base["data"] == "10 classes, train/val/test 1257/180/360"


def test_one_process_checks_nothing(digits) -> None:  # type: ignore[no-untyped-def]
    rank_inputs.check_same_inputs(_cfg(), digits)  # no process group: nothing to compare


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)


# Not kdpipe's own errors, on rank 1 alone: a file its machine cannot read, a bug.
_FAILS_HERE = {
    "unreadable": PermissionError(13, "Permission denied", "/data/train/3/a.png"),
    "bug": RuntimeError("boom in the data\nsecond line"),
}


def _raises(error: Exception):  # type: ignore[no-untyped-def]
    def load_data(*args: object) -> None:
        raise error

    return load_data


def _run_differently(rank: int, world: int, port: int, out: str, said: str, case: str) -> None:
    """`kdpipe run` on two processes whose command lines differ in --epochs, or whose
    machines differ: the teacher weights file rank 1 is given is missing there."""
    _join(rank, world, port)
    if case == "epochs":
        cfg = _cfg(out=out, distill={"train": {"epochs": 2 + rank}})
    elif case in _FAILS_HERE:
        cfg = _cfg(out=out)
        if rank == 1:
            pipeline.load_data = _raises(_FAILS_HERE[case])  # type: ignore[assignment]
    else:
        weights = Path(out).parent / f"teacher{rank}.pt"
        if rank == 0:
            torch.save(models.create("resnet18", 10).state_dict(), weights)
        cfg = _cfg(out=out, teacher={"arch": "resnet18", "weights": str(weights)})
    try:
        api.run(cfg)
    except KdpipeError as e:
        record = [str(e), e.hint, e.exit_code, e.agreed_from]
        Path(said, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("case", ["epochs", "missing file", "unreadable", "bug"])
@pytest.mark.slow  # starts processes
def test_run_stops_every_process_with_what_one_found(tmp_path: Path, case: str) -> None:
    out, said = tmp_path / "run", tmp_path / "said"
    said.mkdir()
    two_ranks(_run_differently, str(out), str(said), case)
    host = socket.gethostname()
    expected = {
        "epochs": "the processes of this run were started with different inputs: rank 1 on "
        f"{host} differs from rank 0 in distill.train.epochs: 3 on rank 1, 2 on rank 0",
        # Before, rank 1 ended alone (saying nothing: the others report options' errors) and
        # rank 0 waited for it in the process group.
        "missing file": f"rank 1 on {host}: --teacher-weights file {tmp_path / 'teacher1.pt'} "
        "does not exist",
        # Before, rank 1 ended with its own error and rank 0 with "lost contact with another
        # process" (or, had rank 1 not ended, waited in the process group).
        "unreadable": f"rank 1 on {host}: cannot use /data/train/3/a.png: Permission denied",
        "bug": f"rank 1 on {host}: internal error: RuntimeError: boom in the data",
    }
    code = 1 if case == "bug" else 2  # what the CLI gives either error in one process
    for rank in (0, 1):  # both stop, with the same line: none waits for the other
        message, hint, exit_code, origin = json.loads((said / f"rank{rank}.json").read_text())
        assert (message, exit_code, origin) == (expected[case], code, 1)
        assert hint
    assert not out.exists()  # refused before the output directory was touched


def _compare(rank: int, world: int, port: int, case: str, said: str) -> None:
    """check_same_inputs with each rank's description (or version) made to differ."""
    _join(rank, world, port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    parts = {
        "data": "10 classes, train/val/test 1257/180/360",
        "data details": '{"class_names": ["0", "1"], "mean": [0.5], "sizes": [1257, 180, 360]}',
        "model files": "none",
        "seed": "0",
        "training precision": '{"teacher": "bfloat16"}',
    }
    if rank == 1 and case == "precision":  # a CPU without bf16 beside one with it
        parts["training precision"] = '{"teacher": "float32"}'
    if rank == 1 and case == "data":  # its details differ too: the sizes say enough
        parts["data"] = "10 classes, train/val/test 1250/180/360"
        parts["data details"] = parts["data details"].replace("1257", "1250")
    if rank == 1 and case == "long":
        parts["model files"] = "net.py:Net@" + "ab" * 32
        parts["seed"] = "1"
    if rank == 1 and case == "version":
        rank_inputs.__version__ = "9.9.9"  # type: ignore[attr-defined]
    if rank == 1 and case == "schema":
        parts["extra"] = "1"
    rank_inputs.describe = lambda cfg, data: parts  # type: ignore[assignment]
    try:
        rank_inputs.check_same_inputs(None, None)  # type: ignore[arg-type]
        message = ""
    except ConfigError as e:
        message = f"{e}\nhint: {e.hint}"
    finally:
        dist.destroy_process_group()
    Path(said, f"rank{rank}.txt").write_text(message)


@pytest.mark.parametrize("case", ["same", "data", "long", "precision", "version", "schema"])
@pytest.mark.slow  # starts processes
def test_check_names_what_differs(tmp_path: Path, case: str) -> None:
    two_ranks(_compare, case, str(tmp_path))
    said = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert said[0] == said[1]
    host, (message, _, hint) = socket.gethostname(), said[0].partition("\nhint: ")
    assert ("--teacher-precision" in hint) == (case == "precision")
    start = f"the processes of this run were started with different inputs: rank 1 on {host} "
    expected = {
        "same": "",
        "data": start + "differs from rank 0 in data: 10 classes, train/val/test 1250/180/360 "
        "on rank 1, 10 classes, train/val/test 1257/180/360 on rank 0",
        "precision": start + 'differs from rank 0 in training precision: {"teacher": "float32"} '
        'on rank 1, {"teacher": "bfloat16"} on rank 0',
        "version": f"rank 1 on {host} runs kdpipe 9.9.9 and rank 0 kdpipe "
        f"{rank_inputs.__version__}",
        "schema": f"rank 1 on {host} runs another build of kdpipe {rank_inputs.__version__}",
    }
    if case == "long":  # cut, with a digest that tells it from any other value
        assert message.startswith(start + "differs from rank 0 in model files: net.py:Net@abab")
        assert "... (" in message and message.endswith("seed: 1 on rank 1, 0 on rank 0")
    else:
        assert message == expected[case]
