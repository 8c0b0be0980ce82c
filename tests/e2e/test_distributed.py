"""Data-parallel training on 2 CPU processes (gloo) equals 1 process with the same global
batch, and only rank 0 writes files."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe.core.config import TrainConfig
from kdpipe.data.augment import BatchAugment
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.methods import get
from kdpipe.distill.stepper import Runtime
from kdpipe.distill.trainer import fit
from tests.ranks import gloo_rank, two_ranks

CFG = TrainConfig(epochs=2, batch_size=32, lr=1e-2)


def _net(seed: int, bn: bool = False) -> nn.Module:
    # No dropout, and BatchNorm only where asked: it sees each rank's share of the batch
    # unless --sync-bn makes it see the whole. (No bias before it: its gradient is rounding
    # noise, which Adam scales up to full steps, different in any two runs.)
    torch.manual_seed(seed)
    if bn:
        return nn.Sequential(
            *(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
            nn.AdaptiveAvgPool2d(1),
            *(nn.Flatten(), nn.BatchNorm1d(8), nn.Linear(8, 5)),
        )
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )


def _data() -> tuple[TensorDataset, TensorDataset]:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 3, 8, 8, generator=g), torch.randint(0, 5, (100,), generator=g)
    return TensorDataset(x, y), TensorDataset(x[:20], y[:20])


def _train(out: Path, method: str) -> dict[str, torch.Tensor]:
    """The distiller's whole trained state: student, extras, and CRD's queues (extra state).
    `METHOD+OPTION...`: `crop-flip` and `resized-crop-flip` augment (each rank its share),
    `bn` gives both models BatchNorm, `sync` trains with --sync-bn."""
    method, *options = method.split("+")
    student, teacher = _net(1, "bn" in options), _net(2, "bn" in options)
    distiller = get(method)(student, teacher, input_shape=(3, 8, 8))
    train, val = _data()
    kind = next((o for o in options if "crop" in o), "")
    aug = BatchAugment(kind, len(train), (8, 8), [0.0] * 3, seed=0) if kind else None
    ck = Checkpointing(out / "ckpt" / "last.pt", key="k", every=1)
    fit(
        distiller,
        train,
        val,
        CFG,
        seed=0,
        desc="t",
        log_path=out / "log.jsonl",
        checkpoint=ck,
        augment=aug,
        runtime=Runtime(sync_bn="sync" in options),
    )
    # swapped back after training: what is saved and exported is the model as built
    assert {type(m) for m in student.modules() if "BatchNorm" in type(m).__name__} <= {
        nn.BatchNorm1d,
        nn.BatchNorm2d,
    }
    return {k: v for k, v in distiller.state_dict().items() if "teacher_model." not in k}


def _worker(rank: int, world: int, port: int, out: str, methods: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for m in methods:
            if m == "predict":
                torch.save(_predictions(), Path(out) / f"predict{rank}.pt")
                continue
            state = _train(Path(out) / m / f"rank{rank}", m)
            torch.save(state, Path(out) / m / f"student{rank}.pt")
    finally:
        dist.destroy_process_group()


def _predictions() -> dict[str, torch.Tensor]:
    """The test-set evaluation (trainer.predict_shared) of 1, 3 and 20 images: under 2 ranks
    each predicts its share (with 1 image, rank 1 has none) and the rows are gathered."""
    from kdpipe.distill.trainer import predict_shared

    torch.manual_seed(0)
    net = _net(1, False)
    _, val = _data()
    out = {}
    for n in (1, 3, 20):
        logits, labels = predict_shared(net, torch.utils.data.Subset(val, range(n)), workers=0)
        out[f"logits{n}"], out[f"labels{n}"] = logits, labels
    return out


def _tensors(value: object) -> list[torch.Tensor]:
    """The tensors in a state_dict value (CRD's queues are dicts of extra state)."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return [value] if isinstance(value, torch.Tensor) else []


# CRD, RKD, SP, CC and PKT compare each sample with the whole global batch (and CRD queues
# it): under torchrun each rank gathers the others' rows, so the result (and CRD's queues)
# must match across ranks and 1 process. Methods that share a spawn share its start-up cost.
# kd+(resized-)crop-flip: each rank augments its share of the batch as one process would.
# kd+bn+sync: BatchNorm over the global batch (--sync-bn); kd+bn, without it, must differ.
@pytest.mark.parametrize(
    "methods",
    [
        ["kd", "kd+crop-flip", "kd+resized-crop-flip", "kd+bn+sync", "kd+bn", "predict"],
        ["crd"],
        ["rkd", "sp", "cc", "pkt"],
    ],
    ids=str,
)
def test_two_gloo_processes_match_one_process(tmp_path: Path, methods: list[str]) -> None:
    two_ranks(_worker, str(tmp_path), methods)
    for method in methods:
        if method == "predict":  # test-set evaluation shared between the ranks
            one = _predictions()
            for r in (0, 1):
                theirs = torch.load(tmp_path / f"predict{r}.pt", weights_only=True)
                assert theirs.keys() == one.keys()
                for k, v in one.items():
                    assert v.shape == theirs[k].shape and torch.allclose(v, theirs[k]), k
        elif method == "kd+bn":
            with pytest.raises(AssertionError, match=r"kd\+bn"):  # each rank normalized its half
                _same_as_one_process(tmp_path / method, method)
        else:
            _same_as_one_process(tmp_path / method, method)


def _same_as_one_process(out: Path, method: str) -> None:
    single = _train(out / "single", method)
    ranks = [torch.load(out / f"student{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == single.keys()
    for name, value in single.items():
        mine, theirs = _tensors(ranks[0][name]), _tensors(ranks[1][name])
        assert len(mine) == len(theirs) == len(_tensors(value)), (method, name)
        for a, b, one in zip(mine, theirs, _tensors(value), strict=True):
            assert torch.equal(a, b), (method, name)  # ranks stay in sync
            if name.endswith("_extra_state"):  # a queue: the same rows, in another order
                a, one = a[a[:, 0].argsort()], one[one[:, 0].argsort()]
            assert torch.allclose(a, one, atol=1e-5, rtol=1e-4), (method, name)
    # Files are written once: rank 0's log has one line per epoch, rank 1 wrote nothing.
    log = [json.loads(line) for line in (out / "rank0" / "log.jsonl").read_text().splitlines()]
    assert len(log) == CFG.epochs
    # validation shared between the ranks (each its half of the images): one process's figures
    one = [json.loads(line) for line in (out / "single" / "log.jsonl").read_text().splitlines()]
    assert [e["val_accuracy"] for e in log] == [e["val_accuracy"] for e in one], method
    assert not (out / "rank1").exists() or not any((out / "rank1").rglob("*.*"))


def _other_start_worker(rank: int, world: int, port: int, out: str) -> None:
    """Each rank builds its student from another seed (as where machines' initializers draw
    other numbers), and a state_dict of other values (bool and int64 too)."""
    from kdpipe.distill.data_parallel import broadcast_state

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        state = {
            "flags": torch.tensor([rank == 0, rank == 1]),
            "counts": torch.full((3,), rank, dtype=torch.int64),
            "empty": torch.zeros(0),
        }
        broadcast_state(state)
        student = _net(1 + rank)
        distiller = get("kd")(student, _net(2), input_shape=(3, 8, 8))
        train, val = _data()
        fit(distiller, train, val, CFG, seed=0, desc="t")
        torch.save({"state": state, "student": student.state_dict()}, Path(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_every_rank_starts_from_rank_0s_state(tmp_path: Path) -> None:
    # Without the broadcast each rank kept its own start, and averaged gradients kept them
    # apart for the whole run.
    two_ranks(_other_start_worker, str(tmp_path))
    got = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    for r in (0, 1):
        assert got[r]["state"]["flags"].tolist() == [True, False]
        assert got[r]["state"]["counts"].tolist() == [0, 0, 0]
    one = get("kd")(_net(1), _net(2), input_shape=(3, 8, 8))  # rank 0's start, one process
    fit(one, *_data(), CFG, seed=0, desc="t")
    for name, value in one.student().state_dict().items():
        assert torch.equal(got[0]["student"][name], got[1]["student"][name]), name
        assert torch.allclose(got[0]["student"][name], value, atol=1e-5, rtol=1e-4), name


def _teacher_config():  # type: ignore[no-untyped-def]
    from kdpipe.core.config import RunConfig

    return RunConfig.model_validate({"teacher": {"arch": "resnet18", "train": {"epochs": 1}}})


def _cached_teacher_worker(rank: int, world: int, port: int, root: str) -> None:
    """The teacher stage on two "machines" with caches of their own: rank 0's holds the
    teacher, rank 1's is empty."""
    from kdpipe.data import load_data
    from kdpipe.stages.teacher import run_teacher_stage, teacher_fingerprint

    with gloo_rank(rank, world, port, KDPIPE_CACHE=f"{root}/cache{rank}"):
        cfg = _teacher_config()
        fp = teacher_fingerprint(cfg, 10)
        result = run_teacher_stage(cfg, load_data(cfg.data, 0), Path(root, "out"), fp)
        saved = {"state": result.model.state_dict(), "source": result.metrics["source"]}
        torch.save(saved, Path(root, f"teacher{rank}.pt"))


def test_rank_0s_cached_teacher_is_every_ranks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only rank 0 keeps the teacher a job trains, so with a cache per machine the others never
    # had it: every rerun trained the teacher again (all ranks had to agree to reuse it).
    from kdpipe import models
    from kdpipe.stages.teacher import _keep_in_cache, cached_teacher_dir, teacher_fingerprint

    monkeypatch.setenv("KDPIPE_CACHE", str(tmp_path / "cache0"))
    cfg = _teacher_config()
    torch.manual_seed(7)
    kept = models.create("resnet18", 10)
    _keep_in_cache(
        kept, {"val_accuracy": 0.5}, cached_teacher_dir(cfg, teacher_fingerprint(cfg, 10))
    )
    two_ranks(_cached_teacher_worker, str(tmp_path))
    for r in (0, 1):
        got = torch.load(tmp_path / f"teacher{r}.pt", weights_only=True)
        assert got["source"] == "cache", r  # reused, not trained
        for name, value in kept.state_dict().items():
            assert torch.equal(got["state"][name], value), (r, name)
    assert not (tmp_path / "cache1").exists()  # rank 1's machine had nothing and got nothing


def _claim(out: Path, rank: int, with_hint: bool = False) -> str:
    """What `_prepare_out_dir` made of `out` on this rank: "ok" or "refused: ..."."""
    from kdpipe.api.pipeline import _prepare_out_dir
    from kdpipe.core.config import RunConfig
    from kdpipe.core.errors import ConfigError
    from kdpipe.parallel.runlock import RunLock

    lock = RunLock(out)
    try:
        _prepare_out_dir(RunConfig(out=out), False, rank == 0, lock)
        return "ok"
    except ConfigError as e:
        return f"refused: {e.message}" + (f" | {e.hint}" if with_hint else "")
    finally:
        lock.release()


def _claim_worker(rank: int, world: int, port: int, root: str) -> None:
    from kdpipe.core.runs import set_writer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    set_writer(rank == 0)
    outcomes = []
    try:
        for name in [f"fresh{i}" for i in range(10)] + ["foreign"]:
            outcomes.append(_claim(Path(root) / name, rank))
        (Path(root) / f"outcomes{rank}.txt").write_text("\n".join(outcomes))
    finally:
        dist.destroy_process_group()


def test_rank_0_alone_claims_the_out_dir_and_every_rank_learns_the_verdict(tmp_path: Path) -> None:
    # Each rank once checked --out itself; a rank that looked while rank 0 was writing
    # config.yaml took the new run for someone else's directory (a CI failure, stop 13).
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    two_ranks(_claim_worker, str(tmp_path))
    rank0, rank1 = ((tmp_path / f"outcomes{r}.txt").read_text().splitlines() for r in (0, 1))
    assert rank0[:10] == rank1[:10] == ["ok"] * 10
    assert all((tmp_path / f"fresh{i}" / "config.yaml").is_file() for i in range(10))
    assert "is a non-empty directory that is not a kdpipe run" in rank0[10]
    assert rank1[10].startswith("refused: rank 0 could not use the output directory")
    assert sorted(p.name for p in (tmp_path / "foreign").iterdir()) == ["notes.txt"]


def _node_local_worker(rank: int, world: int, port: int, root: str) -> None:
    """Two "machines" whose --out is the same path on disks of their own: rank r's
    directory is root/node{r}/run."""
    from kdpipe.core.runs import set_writer
    from kdpipe.parallel.distributed import ranks_not_seeing

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    set_writer(rank == 0)
    outcomes = [repr(ranks_not_seeing(Path(root) / "node0"))]  # one directory: all see it
    try:
        outcomes.append(_claim(Path(root) / f"node{rank}" / "run", rank, with_hint=True))
    finally:
        dist.destroy_process_group()
    (Path(root) / f"outcomes{rank}.txt").write_text("\n".join(outcomes))


def test_an_out_dir_that_other_ranks_do_not_see_is_refused_on_every_rank(tmp_path: Path) -> None:
    # Without the check, ranks on other machines with a directory of their own resume from
    # other checkpoints (or none) and wait forever in the next all-reduce.
    (tmp_path / "node0").mkdir()
    two_ranks(_node_local_worker, str(tmp_path))
    rank0, rank1 = ((tmp_path / f"outcomes{r}.txt").read_text().splitlines() for r in (0, 1))
    assert rank0[0] == rank1[0] == "[]"
    assert rank0[1] == rank1[1].replace("node1", "node0")  # the same path on each machine
    host = socket.gethostname()
    assert rank0[1].startswith(f"refused: --out {tmp_path / 'node0' / 'run'} is not one directory")
    assert f"rank 1 on {host} does not see the files rank 0 writes there" in rank0[1]
    assert "a filesystem every node mounts" in rank0[1]
    assert not (tmp_path / "node1").exists()  # the other "machine" got nothing
    assert not list((tmp_path / "node0").rglob(".kdpipe-shared-*"))  # the probe is gone


def test_nproc_must_fit_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    # 64 processes on 2 cores each hold their own models and data (the memory goes first);
    # a process past the last GPU failed with "invalid device ordinal".
    from kdpipe.core.config import RuntimeConfig
    from kdpipe.core.errors import ConfigError
    from kdpipe.distill.stepper import Runtime
    from kdpipe.parallel import distributed
    from kdpipe.parallel.launch import check_devices

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_devices(2, "auto")
    with pytest.raises(ConfigError, match="--nproc 3 processes but this process may use 2 CPU"):
        check_devices(3, "auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="--nproc 2 processes but this machine has 1 GPU$"):
        check_devices(2, "auto")
    check_devices(2, "cpu")  # on the CPU the cores count, not the GPUs
    # torchrun started by hand with more processes than GPUs: rank 1 is told, not crashed.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(1, 2, 1))
    with pytest.raises(ConfigError, match="process 1 of this machine has no GPU of its own"):
        Runtime.from_config(RuntimeConfig(), workers=0)


def test_loader_workers_follow_the_device_the_data_and_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kdpipe.distill.stepper import loader_workers

    assert loader_workers(3, cuda=False, in_memory=True) == 3  # asked: as asked
    assert loader_workers(None, cuda=False, in_memory=False) == 0  # the CPU trains on every core
    assert loader_workers(None, cuda=True, in_memory=True) == 0  # digits: loading is an index
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader_workers(None, cuda=True, in_memory=False) == 8  # 15 cores free: at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # 4 GPUs here: 4 cores each, one drives its GPU
    assert loader_workers(None, cuda=True, in_memory=False) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert loader_workers(None, cuda=True, in_memory=False) == 1  # still one beside the GPU's


METHODS_SHAPE = (3, 16, 16)


def _every_method_state(method: str) -> dict[str, object]:
    """One epoch of `method` (3 steps of 16) on stock models; everything a checkpoint carries."""
    from kdpipe.models import create

    torch.manual_seed(0)
    # MobileNetV3's hardswish lacks the double backward Jacobian matching needs
    student = create("mobilenet_v2" if method == "jacobian" else "mobilenet_v3_small", 10)
    extra = {"peers": [create("mobilenet_v3_small", 10)]} if method == "dml" else {}
    distiller = get(method)(student, create("resnet18", 10), input_shape=METHODS_SHAPE, **extra)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, *METHODS_SHAPE, generator=g), torch.randint(0, 10, (48,), generator=g)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    fit(distiller, TensorDataset(x, y), TensorDataset(x[:8], y[:8]), cfg, seed=0, desc=method)
    return {k: v for k, v in distiller.state_dict().items() if "teacher_model." not in k}


def _methods_worker(rank: int, world: int, port: int, out: str) -> None:
    from kdpipe.distill.methods import all_methods

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        states = {m: _every_method_state(m) for m in sorted(set(all_methods()) - {"ce"})}
        torch.save(states, Path(out) / f"methods{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_every_method_keeps_its_ranks_identical(tmp_path: Path) -> None:
    # A rank whose state drifts from rank 0's (CRD's queues did) resumes as rank 0 from rank
    # 0's checkpoint: not the run it was. Weights, buffers, extras, the discriminator's
    # optimizer and the queues must be equal on both ranks after an epoch.
    two_ranks(_methods_worker, str(tmp_path))
    ranks = [torch.load(tmp_path / f"methods{r}.pt", weights_only=True) for r in (0, 1)]
    assert len(ranks[0]) == 22
    for method, state in ranks[0].items():
        for name, value in state.items():
            mine, theirs = _tensors(value), _tensors(ranks[1][method][name])
            assert len(mine) == len(theirs), (method, name)
            assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)), (method, name)
