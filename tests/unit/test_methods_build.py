"""Every registered method on real stock models: built with its defaults, one step, gradients
reach the student (and extras) and never the teacher; composition; layer errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Layers
from kdpipe.distill.compose import Composite
from kdpipe.distill.methods import all_methods, get
from kdpipe.models import create

SHAPE = (3, 16, 16)
STUDENT = {"jacobian": "mobilenet_v2"}  # MobileNetV3's hardswish has no double backward


def _pair(method: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return create(STUDENT.get(method, "mobilenet_v3_small"), 10), create("resnet18", 10)


def test_registry_has_the_22_methods_and_the_baseline() -> None:
    expected = {
        *("mimic", "logits", "kd", "fitnet", "at", "adversarial", "jacobian", "dml"),
        *("projection", "takd", "ab", "binary", "sp", "rkd", "pkt", "crd", "dkd", "nst"),
        *("cc", "vid", "ft", "fsp"),
    }
    assert set(all_methods()) == expected | {"ce"}
    for cls in all_methods().values():
        assert cls.paper and cls.__doc__ or cls.__module__, cls.name
        assert " 20" in cls.paper or cls.name == "ce", cls.paper  # a year-stamped citation


@pytest.mark.parametrize("method", sorted(set(all_methods()) - {"ce"}))
def test_one_step_trains_student_and_extras_never_the_teacher(method: str) -> None:
    student, teacher = _pair(method)
    cls = get(method)
    extra = {"peers": [create("mobilenet_v3_small", 10)]} if method == "dml" else {}
    d = cls(student, teacher, input_shape=SHAPE, **extra)
    d.train()
    x = torch.randn(4, *SHAPE)
    y = torch.tensor([0, 1, 2, -1])  # one unlabeled sample
    opt = torch.optim.SGD(list(d.trainable_parameters()), lr=0.01)
    before_s = [p.detach().clone() for p in student.parameters()]
    before_t = [p.detach().clone() for p in teacher.parameters()]
    for stage in d.stages:
        d.stage = stage.name
        terms = d.train_step(x, y, None, opt)
        assert terms and all(torch.isfinite(v) for v in terms.values()), (stage, terms)
    moved = [not torch.equal(a, p) for a, p in zip(before_s, student.parameters(), strict=True)]
    assert any(moved)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before_t, teacher.parameters(), strict=True))
    assert not teacher.training
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not any(id(p) in teacher_ids for p in d.trainable_parameters())


def test_composition_is_the_weighted_sum_of_each_methods_loss() -> None:
    student, teacher = _pair("kd")
    parts = {m: get(m) for m in ("kd", "ce", "at")}
    weights = {"kd": 0.9, "ce": 0.1, "at": 1000.0}
    c = Composite(student, teacher, parts, weights, {"T": 2.0, "at.p": 2.0}, input_shape=SHAPE)
    x, y = torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 3])
    c.eval()  # no dropout: both passes below see the same logits
    _, terms = c(x, y)
    b = c.run_models(x, y, None)
    assert set(terms) == {"kd", "ce", "at"}
    for m, w in weights.items():
        own = c.parts[m].loss(b)  # type: ignore[operator]
        assert terms[m].item() == pytest.approx(w * next(iter(own.values())).item(), rel=1e-4)
    assert c.parts["kd"].params["T"] == 2.0  # type: ignore[index]
    with pytest.raises(ConfigError, match="cannot be composed"):
        Composite(student, teacher, {"jacobian": get("jacobian")}, {"jacobian": 1.0}, {})
    with pytest.raises(ConfigError, match="matches none"):
        Composite(student, teacher, parts, weights, {"zz.T": 1.0}, input_shape=SHAPE)


def test_named_layers_shape_mismatch_is_bridged_and_bad_names_are_listed() -> None:
    student, teacher = _pair("fitnet")
    layers = Layers(teacher=["layer3"], student=["features.3"])
    d = get("fitnet")(student, teacher, input_shape=SHAPE, layers=layers, params={"stages": 1})
    _, terms = d(torch.randn(2, *SHAPE), torch.tensor([0, 1]))
    assert torch.isfinite(terms["hint"])
    with pytest.raises(ConfigError, match="no layer 'layer9'") as e:
        get("at")(student, teacher, input_shape=SHAPE, layers=Layers(teacher=["layer9"]))
    assert "layer" in e.value.hint
    with pytest.raises(ConfigError, match="2 teacher layers but 1 student"):
        get("at")(
            student,
            teacher,
            input_shape=SHAPE,
            layers=Layers(teacher=["layer2", "layer3"], student=["features.3"]),
        )


def test_binary_student_holds_plus_minus_alpha_after_finish() -> None:
    student, teacher = _pair("binary")
    d = get("binary")(student, teacher, input_shape=SHAPE)
    d.finish(torch.utils.data.TensorDataset(torch.randn(2, *SHAPE), torch.tensor([0, 1])))
    convs = [m for m in student.modules() if isinstance(m, nn.Conv2d)]
    inner = convs[1:]
    for conv in inner:
        per_channel = conv.weight.detach().abs().flatten(1)
        assert torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel))
    first = convs[0].weight.detach().abs().flatten(1)
    assert not torch.allclose(first, first[:, :1].expand_as(first))  # first layer stays float
    assert not any("parametrizations" in n for n, _ in student.named_parameters())


@pytest.mark.parametrize("method", sorted(set(all_methods()) - {"ce"}))
def test_checkpoint_round_trip_restores_student_and_extras(method: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kdpipe.distill import checkpoint as ckpt

    def build(seed: int):  # type: ignore[no-untyped-def]
        torch.manual_seed(seed)
        student, teacher = _pair(method)
        extra = {"peers": [create("mobilenet_v3_small", 10)]} if method == "dml" else {}
        torch.manual_seed(seed)
        return get(method)(student, teacher, input_shape=SHAPE, **extra)

    d = build(0)
    opt = torch.optim.SGD(list(d.trainable_parameters()), lr=0.01)
    d.train()
    d.train_step(torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 3]), None, opt)
    torch.save(ckpt.trainable_state(d), tmp_path / "c.pt")
    fresh = build(1)
    ckpt.restore_module(fresh, torch.load(tmp_path / "c.pt", weights_only=True))
    a, b = ckpt.trainable_state(d), ckpt.trainable_state(fresh)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def test_adversarial_discriminator_loss_is_logged_per_epoch() -> None:
    """D's own loss is a monitored value (not part of the student's loss): it reaches the
    history through the loss log like the terms do."""
    from torch.utils.data import TensorDataset

    from kdpipe.core.config import TrainConfig
    from kdpipe.distill.trainer import fit

    student, teacher = _pair("adversarial")
    d = get("adversarial")(student, teacher, input_shape=SHAPE)
    data = TensorDataset(torch.randn(16, *SHAPE), torch.randint(0, 10, (16,)))
    result = fit(d, data, data, TrainConfig(epochs=1, batch_size=8), seed=0, desc="adv")
    entry = result.history[-1]
    assert {"loss_adv", "loss_l1", "loss_d_loss"} <= set(entry)
    assert entry["loss_d_loss"] > 0  # a BCE over real and fake: positive


@pytest.mark.parametrize(
    ("distill", "message"),
    [
        ({"method": "kd", "params": {"temp": 3}}, "method 'kd' has no parameter 'temp'"),
        ({"method": "kd", "params": {"T": 0}}, "T=0.0 is out of range"),
        ({"terms": {"kd": 1, "at": 100}, "params": {"at.q": 2}}, "'at' has no parameter 'q'"),
        ({"terms": {"kd": 1, "at": 100}, "params": {"zz": 2}}, "matches none of the composed"),
    ],
)
def test_method_parameters_are_checked_before_any_training(distill: dict, message: str) -> None:
    from kdpipe import api
    from kdpipe.core.config import RunConfig

    with pytest.raises(ConfigError, match=message):
        api.validate(RunConfig.model_validate({"distill": distill}))
