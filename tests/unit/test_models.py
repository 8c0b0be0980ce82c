"""The model resolver and safe weight loading."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from kdpipe.core.errors import ModelError
from kdpipe.models import create, replace_head
from kdpipe.models.weights import load_into, load_state_dict_file


def test_create_sizes_the_head() -> None:
    m = create("resnet18", 7)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    m = create("mobilenet_v3_small", 4)
    assert m.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)


def test_unknown_model_lists_closest_names() -> None:
    with pytest.raises(ModelError) as e:
        create("resnet05", 10)
    assert "resnet50" in e.value.hint


def test_weights_round_trip_and_checkpoint_dicts(tmp_path: Path) -> None:
    src = create("resnet18", 3)
    plain, nested, ddp = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save(src.state_dict(), plain)
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, nested)
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, ddp)
    x = torch.randn(2, 3, 32, 32)
    ref = src.eval()(x)
    for f in (plain, nested, ddp):
        m = create("resnet18", 3, f).eval()
        assert torch.equal(m(x), ref)


def test_mismatched_weights_name_the_keys(tmp_path: Path) -> None:
    f = tmp_path / "w.pt"
    torch.save(create("resnet18", 3).state_dict(), f)
    with pytest.raises(ModelError, match="fc.weight") as e:
        create("resnet18", 10, f)
    assert "shape mismatch" in e.value.message
    with pytest.raises(ModelError, match="missing .* keys"):
        create("resnet34", 3, f)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # executed by a plain (unsafe) unpickle
        return (Path.touch, (self.marker,))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(1), "x": _Payload(marker)}, evil)
    assert not marker.exists()
    with pytest.raises(ModelError, match="refused"):
        load_state_dict_file(evil)
    assert not marker.exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelError):
        load_state_dict_file(raw)
    assert not marker.exists()


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "junk.pt"
    f.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelError, match="not a readable PyTorch file"):
        load_state_dict_file(f)


def test_safetensors_files_load_by_name_or_by_content(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    net = create("resnet18", 3)
    # a DDP-style prefix, as hub checkpoints sometimes carry; the name need not say .safetensors
    state = {f"module.{k}": v.contiguous() for k, v in net.state_dict().items()}
    for name in ("w.safetensors", "w.bin"):
        save_file(state, str(tmp_path / name))
        loaded = load_state_dict_file(tmp_path / name)
        other = create("resnet18", 3)
        load_into(other, loaded, name)
        assert torch.equal(other.fc.weight, net.fc.weight)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "w.bin").read_bytes()[:100])
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_state_dict_file(cut)


def test_replace_head_swaps_last_linear() -> None:
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1000))
    replace_head(m, 5)
    assert m(torch.zeros(2, 3, 2, 2)).shape == (2, 5)


def test_replace_head_swaps_squeezenets_classifier_conv() -> None:
    m = create("squeezenet1_1", 1000)  # as torchvision's ImageNet weights build it
    features = m.features[0].weight.detach().clone()
    replace_head(m, 5)
    conv = m.classifier[1]
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (512, 5)
    assert torch.equal(m.features[0].weight, features)  # the trunk is kept
    assert m.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    with pytest.raises(ModelError, match="no Linear or 1x1-conv classifier"):
        replace_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), 5)


@pytest.mark.parametrize("arch", ["mnasnet0_5", "efficientnet_b0"])
def test_heads_initialized_for_1000_classes_are_tamed(arch: str) -> None:
    # torchvision scales these heads by 1/sqrt(classes): with 10 classes the first logits had
    # a std near 10 (mnasnet0_5) and 5 (efficientnet_b0), CE 15 and 5.6 against chance 2.3,
    # and the default run ended at 23 % and 43 %.
    import torchvision

    x = torch.randn(64, 3, 32, 32)
    torch.manual_seed(0)
    stock = torchvision.models.get_model(arch, weights=None, num_classes=10).train()
    torch.manual_seed(0)
    ours = create(arch, 10).train()  # batch statistics: fresh running ones are 0 and 1
    with torch.no_grad():
        assert float(stock(x).std()) > 2.0
        assert float(ours(x).std()) < 1.0
    # The trunk is torchvision's, unchanged.
    first = next(p for n, p in ours.named_parameters() if "weight" in n)
    assert torch.equal(first, next(p for n, p in stock.named_parameters() if "weight" in n))


def test_heads_already_within_the_default_scale_are_kept() -> None:
    import torchvision

    torch.manual_seed(0)
    stock = torchvision.models.resnet18(num_classes=10, zero_init_residual=True)
    torch.manual_seed(0)
    assert torch.equal(create("resnet18", 10).fc.weight, stock.fc.weight)


def test_module_versions_survive_loading(tmp_path: Path) -> None:
    """MNASNet reads its state_dict version when loading: kdpipe's unwrapping keeps it, and a
    file without versions (a plain dict) takes the model's own."""
    src = create("mnasnet0_5", 3).eval()
    x = torch.randn(1, 3, 32, 32)
    ref = src(x)
    plain, ddp, bare = tmp_path / "a.pt", tmp_path / "b.pt", tmp_path / "c.pt"
    torch.save(src.state_dict(), plain)
    wrapped = nn.Sequential()
    wrapped.add_module("module", src)  # DDP's key layout: module.<key>
    torch.save(wrapped.state_dict(), ddp)
    torch.save(dict(src.state_dict()), bare)
    assert getattr(torch.load(bare, weights_only=True), "_metadata", None) is None
    for f in (plain, ddp, bare):
        assert torch.equal(create("mnasnet0_5", 3, f).eval()(x), ref)
    assert load_state_dict_file(ddp)._metadata[""] == {"version": 2}  # type: ignore[attr-defined]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v3_small", "regnet_x_400mf"])
def test_a_model_built_on_meta_holds_exactly_the_files_tensors(arch: str, tmp_path: Path) -> None:
    """create() with a weights file skips the random init (meta device, assign); RegNet, which
    cannot be built on meta, takes the ordinary path. Either way: the file's values, fp32,
    trainable parameters, nothing left on meta, the same outputs."""
    ref = create(arch, 5)
    half = {k: v.half() if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    torch.save(half, tmp_path / "w.pt")
    model = create(arch, 5, tmp_path / "w.pt")
    state = model.state_dict()
    assert state.keys() == half.keys()
    for k, v in half.items():
        assert state[k].dtype == ref.state_dict()[k].dtype, k  # an fp16 file, an fp32 model
        assert torch.equal(state[k], v.to(state[k].dtype)), k
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in model.parameters())
    ref.load_state_dict(half)  # the ordinary path, for the outputs
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), ref.eval()(x))
