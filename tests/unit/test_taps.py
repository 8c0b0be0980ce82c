"""Feature taps: hooks on stock models capture stage outputs and inputs, and leave no trace."""

from __future__ import annotations

import pytest
import torch

from kdpipe.core.errors import ConfigError
from kdpipe.distill.taps import FeatureTaps, as_feature_map, default_layers
from kdpipe.models import create


def test_taps_capture_outputs_and_inputs_then_detach() -> None:
    model = create("resnet18", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with FeatureTaps(model, ["layer2", "layer4", "fc:in"]) as taps:
        logits = model(x)
        assert taps["layer2"].shape == (2, 128, 4, 4)
        assert taps["layer4"].shape == (2, 512, 1, 1)
        assert taps["fc:in"].shape == (2, 512)  # the penultimate embedding
        assert torch.allclose(model.fc(taps["fc:in"]), logits)
    assert not model.layer2._forward_hooks and not model.fc._forward_pre_hooks


def test_unknown_layer_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="no layer 'layer9'") as e:
        FeatureTaps(create("resnet18", 10), ["layer9"])
    assert "layer" in e.value.hint


@pytest.mark.parametrize(
    ("arch", "stages", "embedding"),
    [
        ("resnet18", ["layer1", "layer2", "layer3", "layer4"], "fc:in"),
        (
            "mobilenet_v2",
            ["features.3", "features.6", "features.13", "features.18"],
            "classifier.1:in",
        ),
        (
            "vgg11_bn",
            ["features.6", "features.13", "features.20", "features.27"],
            "classifier.6:in",
        ),
        ("regnet_y_400mf", [f"trunk_output.block{i}" for i in range(1, 5)], "fc:in"),
        (
            "efficientnet_b0",
            ["features.2", "features.3", "features.5", "features.8"],
            "classifier.1:in",
        ),
        (
            "densenet121",
            [*(f"features.denseblock{i}" for i in (1, 2, 3)), "features.norm5"],
            "classifier:in",
        ),
        (
            "convnext_tiny",
            ["features.1", "features.3", "features.5", "features.7"],
            "classifier.2:in",
        ),
        (
            "mobilenet_v3_small",
            ["features.1", "features.3", "features.8", "features.12"],
            "classifier.3:in",
        ),
        # Inception's trunk ends in pool + dropout at 1x1: not a stage.
        ("inception_v3", ["Conv2d_4a_3x3", "Mixed_5d", "Mixed_6e", "Mixed_7c"], "fc:in"),
        ("maxvit_t", [f"blocks.{i}" for i in range(4)], "classifier.5:in"),
        # A ViT has one resolution: the blocks that end each quarter of its depth.
        ("vit_b_16", [f"encoder.layers.encoder_layer_{i}" for i in (2, 5, 8, 11)], "heads.head:in"),
    ],
)
def test_default_layers_per_family(arch: str, stages: list[str], embedding: str) -> None:
    model = create(arch, 10)
    assert default_layers(model, "stages") == stages
    assert default_layers(model, "embedding") == [embedding]


def test_pre_activation_taps_see_negative_values_the_stage_output_does_not() -> None:
    # AB needs values before the ReLU: ResNet's pre taps are the input of each stage's last
    # (in-place) ReLU, copied before the ReLU overwrites it.
    torch.manual_seed(0)
    model = create("resnet18", 10).eval()
    for m in model.modules():  # undo the zero-init of residual branches: a trained-like net
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.normal_(m.weight)
    pre = default_layers(model, "pre")
    assert pre == ["layer1.1.relu:in", "layer2.1.relu:in", "layer3.1.relu:in", "layer4.1.relu:in"]
    with FeatureTaps(model, ["layer3", pre[2]]) as taps:
        model(torch.randn(2, 3, 32, 32))
    assert taps[pre[2]].min() < 0 and taps["layer3"].min() >= 0
    assert torch.equal(taps[pre[2]].clamp_min(0), taps["layer3"])
    # MobileNetV2 blocks end without an activation: the stage output is already pre-activation.
    assert default_layers(create("mobilenet_v2", 10), "pre")[0] == "features.3"


def test_conv_classifier_embedding_is_its_input_map_averaged_over_space() -> None:
    # SqueezeNet classifies with a 1x1 conv: RKD/PKT/CC/CRD take the map that conv reads,
    # averaged over space like a Linear head's global pool.
    from kdpipe.distill.methods import get

    torch.manual_seed(0)
    student = create("squeezenet1_1", 10)
    assert default_layers(student, "embedding") == ["classifier.1:in"]
    d = get("rkd")(student, create("resnet18", 10), input_shape=(3, 32, 32))
    d.eval()
    x = torch.randn(3, 3, 32, 32)
    _, feats = d._tapped(student, "s", x)
    with torch.no_grad():
        expected = student.features(x).mean((2, 3))  # dropout is off in eval mode
    assert feats["embedding"][0].shape == (3, 512)
    torch.testing.assert_close(feats["embedding"][0], expected)
    with pytest.raises(ConfigError, match="no Linear or 1x1-conv classifier"):
        default_layers(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Tanh()), "embedding")


def test_swin_stages_reach_methods_channels_first() -> None:
    # torchvision's Swin computes its stages (N, H, W, C); every method reads (N, C, H, W).
    # FitNets' 1x1 connector failed on them and AT averaged over the wrong axis.
    from kdpipe.distill.methods import get

    torch.manual_seed(0)
    student = create("swin_t", 10)
    assert default_layers(student, "stages") == [f"features.{i}" for i in (1, 3, 5, 7)]
    d = get("fitnet")(student, create("resnet18", 10), input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    student.eval()  # stochastic depth off: two forwards agree
    _, feats = d._tapped(student, "s", x)
    assert [tuple(f.shape) for f in feats["stages"]] == [
        (2, 96, 8, 8),
        (2, 192, 4, 4),
        (2, 384, 2, 2),
        (2, 768, 1, 1),
    ]
    with FeatureTaps(student, ["features.3"]) as taps:
        student(x)
    assert torch.equal(feats["stages"][1], taps["features.3"].permute(0, 3, 1, 2))
    d.train()
    for stage in d.stages:
        d.stage = stage.name
        terms = d.train_step(
            x, torch.tensor([1, 2]), None, torch.optim.SGD(d.trainable_parameters(), lr=0.01)
        )
        assert all(torch.isfinite(v) for v in terms.values())


def test_vit_tokens_become_a_map_without_the_class_token() -> None:
    tokens = torch.arange(2 * 10 * 5, dtype=torch.float32).reshape(2, 10, 5)  # cls + 3x3
    fmap = as_feature_map(tokens)
    assert fmap.shape == (2, 5, 3, 3)
    for r in range(3):
        for c in range(3):
            assert torch.equal(fmap[:, :, r, c], tokens[:, 1 + 3 * r + c, :])
    assert torch.equal(as_feature_map(tokens[:, 1:]), fmap)  # no class token
    assert as_feature_map(torch.zeros(2, 7, 5)).shape == (2, 7, 5)  # not a square grid
    nchw = torch.randn(2, 64, 8, 8)
    assert as_feature_map(nchw) is nchw


def test_stages_of_different_depths_pair_the_deepest_unless_named() -> None:
    from kdpipe.distill.base import Layers
    from kdpipe.distill.methods import get

    alexnet, resnet = create("alexnet", 10), create("resnet18", 10)  # 3 stages against 4
    d = get("fitnet")(alexnet, resnet, input_shape=(3, 64, 64))
    assert d.layer_names["s"]["stages"] == ["features.1", "features.4", "features.11"]
    assert d.layer_names["t"]["stages"] == ["layer2", "layer3", "layer4"]
    named = Layers(teacher=["layer3", "layer4"], student=["features.11"])
    with pytest.raises(ConfigError, match="2 teacher layers but 1 student layers"):
        get("fitnet")(alexnet, resnet, input_shape=(3, 64, 64), layers=named)
