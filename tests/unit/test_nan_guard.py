"""A NaN/Inf loss stops training with the step and the term, before the bad update, and
keeps the last good checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from kdpipe.core.config import TrainConfig
from kdpipe.core.errors import ConfigError, TrainingError
from kdpipe.distill.base import Batch
from kdpipe.distill.checkpoint import Checkpointing
from kdpipe.distill.checkpoint import load as load_checkpoint
from kdpipe.distill.methods.kd import HintonKD
from kdpipe.distill.trainer import fit


class BreaksAtStep(HintonKD):
    """KD whose soft-target term turns NaN at a given step."""

    def __init__(self, *args, at: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.at, self.calls = at, 0

    def loss(self, b: Batch) -> dict[str, Tensor]:
        self.calls += 1
        out = super().loss(b)
        if self.calls == self.at:
            out["kd"] = out["kd"] * float("nan")
        return out


def test_nan_stops_with_step_and_term_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    d = BreaksAtStep(student, teacher, input_shape=(4, 1, 1), at=7)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    ck = Checkpointing(tmp_path / "last.pt", key="k", every=2)
    cfg = TrainConfig(epochs=3, batch_size=8)
    with pytest.raises(TrainingError, match="loss term 'kd' became nan at train epoch 2 step 2"):
        fit(d, data, data, cfg, seed=0, desc="t", checkpoint=ck)
    saved, _ = load_checkpoint(ck) or (None, None)
    assert saved is not None and (saved["epoch"], saved["batch"]) == (2, 0)  # the epoch-1 end
    assert all(torch.isfinite(p).all() for p in student.parameters())  # no NaN update


def test_out_of_range_method_parameters_are_refused() -> None:
    with pytest.raises(ConfigError, match="T=0.0 is out of range"):
        HintonKD(nn.Linear(2, 2), nn.Linear(2, 2), params={"T": 0.0})
    with pytest.raises(ConfigError, match="out of range"):
        HintonKD(nn.Linear(2, 2), nn.Linear(2, 2), params={"alpha": float("inf")})


def _rank_worker(rank: int, world: int, port: int, root: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    # Only rank 1's shard turns NaN (a bad image on one rank), at its 7th step.
    d = BreaksAtStep(student, teacher, input_shape=(4, 1, 1), at=7 if rank == 1 else 10**9)
    data = TensorDataset(torch.randn(80, 4), torch.randint(0, 3, (80,)))
    ck = Checkpointing(Path(root) / "last.pt", key="k", every=2)
    outcome = "finished"
    try:
        fit(d, data, data, TrainConfig(epochs=3, batch_size=16), seed=0, desc="t", checkpoint=ck)
    except TrainingError as e:
        outcome = f"{e.everywhere} {e.message}"
    finally:
        dist.destroy_process_group()
    (Path(root) / f"outcome{rank}.txt").write_text(outcome)


@pytest.mark.slow  # starts processes
def test_a_nan_on_one_rank_stops_every_rank_at_that_step(tmp_path: Path) -> None:
    from tests.ranks import two_ranks

    two_ranks(_rank_worker, str(tmp_path))
    outcomes = [(tmp_path / f"outcome{r}.txt").read_text() for r in (0, 1)]
    assert outcomes == ["True loss term 'kd' became nan at train epoch 2 step 2 on rank 1"] * 2
    saved, _ = load_checkpoint(Checkpointing(tmp_path / "last.pt", key="k")) or (None, None)
    assert saved is not None and (saved["epoch"], saved["batch"]) == (2, 0)
