"""--sync-bn's layer swap (distill/sync_bn.py): which layers change class, that they compute
what they did on one process, and that training ends with the model as built. Across ranks,
tests/unit/test_distributed.py trains with it on 2 gloo processes against 1."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from kdpipe.distill import sync_bn


class _Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student_model = torchvision.models.resnet18(num_classes=4)
        self.teacher_model = torchvision.models.resnet18(num_classes=4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


@pytest.mark.parametrize("cuda", [False, True], ids=["gloo-layers", "cuda-syncbatchnorm"])
def test_the_swap_keeps_tensors_and_outputs_and_is_undone(cuda: bool) -> None:
    torch.manual_seed(0)
    pair = _Pair().train()
    before = {k: v.clone() for k, v in pair.state_dict().items()}
    classes = {n: type(m) for n, m in pair.named_modules()}
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        expected = pair.head(pair.student_model(x))
    pair.load_state_dict(before)  # the running statistics that forward moved
    with sync_bn.global_statistics(pair, on=True, cuda=cuda) as swapped:
        assert swapped == 20 + 1  # resnet18's 20 BatchNorm layers and the head's, not the teacher's
        sync = nn.SyncBatchNorm if cuda else sync_bn.GlobalBatchNorm
        bn = pair.student_model.bn1
        assert isinstance(bn, sync) and isinstance(bn, nn.BatchNorm2d)
        assert isinstance(pair.head[1], nn.BatchNorm1d)
        assert type(pair.teacher_model.bn1) is nn.BatchNorm2d
        assert pair.state_dict().keys() == before.keys()
        with torch.no_grad():  # one process: plain BatchNorm, running statistics included
            got = pair.head(pair.student_model(x))
        assert torch.equal(got, expected)
    assert {n: type(m) for n, m in pair.named_modules()} == classes
    assert not hasattr(pair.student_model.bn1, "process_group")
    assert sync_bn.global_statistics(pair, on=False).__enter__() == 0


def test_the_flag_reaches_training_and_its_fingerprint() -> None:
    from kdpipe.core.config import RuntimeConfig
    from kdpipe.distill.stepper import Runtime, training_numerics

    on, off = RuntimeConfig(sync_bn=True), RuntimeConfig(device="cpu")
    assert Runtime.from_config(on, 0).sync_bn and not Runtime.from_config(off, 0).sync_bn
    # a 2-process run without it trained another model: not reused for one with it
    assert training_numerics(on)["sync_bn"] == "on" and "sync_bn" not in training_numerics(off)
