"""fp16 AMP (GPUs without bf16: T4, V100): the grad scaler's path through Stepper.update, for
methods with one optimizer, with a discriminator's own optimizer and with DML's peers. Run on
the CPU, which autocasts to fp16 and has a grad scaler of its own; a CPU *run* never uses
AMP (Runtime.from_config), these tests build the Runtime directly."""

from __future__ import annotations

import pytest
import torch

from kdpipe.distill.methods import get
from kdpipe.distill.stepper import Runtime, Stepper
from kdpipe.models import create

SHAPE = (3, 16, 16)
METHODS = ["kd", "fitnet", "adversarial", "dml"]


def _build(method: str, amp: torch.dtype | None):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    student, teacher = create("mobilenet_v3_small", 10), create("resnet18", 10)
    extra = {"peers": [create("mobilenet_v3_small", 10)]} if method == "dml" else {}
    d = get(method)(student, teacher, input_shape=SHAPE, **extra)
    d.stage = d.stages[-1].name  # FitNets: its KD stage
    d.stepper = Stepper(Runtime(amp=amp))
    d.train()
    opt = torch.optim.SGD(list(d.trainable_parameters()), lr=0.01)
    g = torch.Generator().manual_seed(1)
    batch = torch.randn(8, *SHAPE, generator=g), torch.randint(0, 10, (8,), generator=g)
    return d, opt, batch


def _flat(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


@pytest.mark.parametrize("method", METHODS)
def test_an_fp16_step_moves_the_student_as_an_fp32_step_does(method: str) -> None:
    """The scaled gradients are unscaled before the optimizer sees them (missing that, the
    step would be 65536 times too long)."""
    moves = {}
    for amp in (None, torch.float16):
        d, opt, (x, y) = _build(method, amp)
        before = _flat(d.student())
        torch.manual_seed(2)  # the same dropout masks in both
        terms = d.train_step(x, y, None, opt)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        moves[amp] = _flat(d.student()) - before
    fp32, fp16 = moves[None], moves[torch.float16]
    assert 0.8 < float(fp16.norm() / fp32.norm()) < 1.25
    assert float(torch.nn.functional.cosine_similarity(fp16, fp32, dim=0)) > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_an_fp16_overflow_skips_the_step_and_backs_off_instead_of_stopping_the_run(
    method: str,
) -> None:
    """Gradients that overflow fp16 at too large a scale: every optimizer of the step (the
    student's, the discriminator's, each peer's) skips it and the scale backs off; the loss
    terms are finite, so the NaN guard must not stop the run."""
    d, opt, (x, y) = _build(method, torch.float16)
    d.stepper.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    trained = [*d.students(), *d.own_optimized()]  # student, DML's peers, a discriminator
    before = [_flat(m) for m in trained]
    terms = d.train_step(x, y, None, opt)  # no TrainingError
    assert all(torch.isfinite(v) for v in terms.values()), terms
    assert all(torch.equal(b, _flat(m)) for b, m in zip(before, trained, strict=True))
    assert d.stepper.scaler.get_scale() < 2.0**60
    d.stepper.scaler = torch.amp.GradScaler("cpu")  # a workable scale: the step is taken
    d.train_step(x, y, None, opt)
    assert not torch.equal(before[0], _flat(d.student()))
