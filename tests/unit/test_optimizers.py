"""Training uses torch's fused optimizer kernels where they exist, with the same numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdpipe.core.config import TrainConfig
from kdpipe.distill import trainer
from kdpipe.distill.optimizers import fused


def _net() -> nn.Module:
    # No conv bias before BatchNorm: its gradient is rounding noise, which Adam would scale up.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_make_optimizer_is_fused_and_steps_like_the_default(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast_net, ref_net = _net(), _net()
    cfg = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.05)
    opt, _ = trainer.make_optimizer(list(fast_net.parameters()), cfg, total_steps=10)
    assert opt.defaults["fused"] is True
    # The same recipe (one-cycle schedule included) with torch's default implementation.
    monkeypatch.setattr(trainer, "fused", lambda cls, params, **kw: cls(params, **kw))
    ref_opt, _ = trainer.make_optimizer(list(ref_net.parameters()), cfg, total_steps=10)
    assert not ref_opt.defaults["fused"]
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    for _ in range(3):
        for net, o in ((fast_net, opt), (ref_net, ref_opt)):
            loss = nn.functional.cross_entropy(net(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
    moved = max(
        (p - p0).abs().max().item()
        for p, p0 in zip(fast_net.parameters(), _net().parameters(), strict=True)
    )
    gap = max(
        (p - q).abs().max().item()
        for p, q in zip(fast_net.parameters(), ref_net.parameters(), strict=True)
    )
    assert moved > 1e-4  # the weights did train
    assert gap < 1e-5


def test_fused_falls_back_where_the_optimizer_has_no_fused_kernel() -> None:
    class Plain(torch.optim.SGD):
        def __init__(self, params, **kwargs) -> None:  # type: ignore[no-untyped-def]
            if "fused" in kwargs:
                raise RuntimeError("fused is not supported here")
            super().__init__(params, **kwargs)

    opt = fused(Plain, _net().parameters(), lr=0.1)
    assert isinstance(opt, Plain)
    assert not opt.defaults.get("fused")
    assert len(opt.param_groups[0]["params"]) == 5
