"""The teacher's inference precision: which dtype each choice means, the logit table computed
in it (fp32 rows close to the fp32 table, kept under a key of its own), and the per-step
teacher forward returning fp32 whatever it computed in."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdpipe import models
from kdpipe.core.config import RuntimeConfig
from kdpipe.core.errors import ConfigError
from kdpipe.distill.cache import teacher_logits_table, teacher_outputs
from kdpipe.distill.methods import get
from kdpipe.distill.stepper import Runtime, Stepper, cpu_has_native_bf16, teacher_precision


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, 4),
    ).eval()  # fmt: skip


def _images(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.arange(n) % 4)


def test_each_choice_resolves_to_its_dtype_on_the_cpu() -> None:
    assert teacher_precision("fp32", cuda=False) is None
    assert teacher_precision("bf16", cuda=False) is torch.bfloat16
    auto = teacher_precision("auto", cuda=False)
    assert auto is (torch.bfloat16 if cpu_has_native_bf16() else None)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        teacher_precision("fp16", cuda=False)
    rt = Runtime.from_config(RuntimeConfig(device="cpu", teacher_precision="fp32"), 0)
    assert rt.teacher_dtype is None


def test_bf16_table_is_fp32_close_to_the_fp32_one_and_stored_apart() -> None:
    teacher, data = _teacher(), _images()
    exact = teacher_logits_table(teacher, data)
    half = teacher_logits_table(teacher, data, dtype=torch.bfloat16)
    assert half.dtype == torch.float32 and half.shape == exact.shape
    assert not torch.equal(half, exact)  # really computed in bf16 (8 mantissa bits)
    torch.testing.assert_close(half, exact, atol=0.05, rtol=0.02)
    stored_exact = teacher_outputs(teacher, data, 4)
    stored_half = teacher_outputs(teacher, data, 4, dtype=torch.bfloat16)
    assert stored_half.source == "computed" and stored_half.path != stored_exact.path
    assert torch.equal(teacher_outputs(teacher, data, 4, dtype=torch.bfloat16).logits, half)
    assert torch.equal(teacher_outputs(teacher, data, 4).logits, exact)


def test_per_step_teacher_runs_in_bf16_and_hands_back_fp32() -> None:
    torch.manual_seed(0)
    teacher = models.create("resnet18", 4).eval()
    student = models.create("resnet18", 4)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    distiller = get("fitnet")(student, teacher)  # the teacher's features feed the loss
    ref = distiller.run_models(x, y, None)
    distiller.stepper = Stepper(Runtime(teacher_dtype=torch.bfloat16))
    b = distiller.run_models(x, y, None)
    assert b.z_t is not None and ref.z_t is not None
    assert b.z_t.dtype == torch.float32 and not torch.equal(b.z_t, ref.z_t)
    torch.testing.assert_close(b.z_t, ref.z_t, atol=0.1, rtol=0.05)
    for kind, feats in b.t.items():
        assert all(f.dtype == torch.float32 for f in feats), kind
        for f, g in zip(feats, ref.t[kind], strict=True):
            torch.testing.assert_close(f, g, atol=0.1, rtol=0.05)
