"""Feature taps: hooks on stock models capture stage outputs and inputs, and leave no trace."""

from __future__ import annotations

import pytest
import torch

from kdpipe.distill.taps import FeatureTaps
from kdpipe.errors import ConfigError
from kdpipe.models import create


def test_taps_capture_outputs_and_inputs_then_detach() -> None:
    model = create("resnet18", 10).eval()
    x = torch.randn(2, 3, 32, 32)
    with (
        FeatureTaps(model, ["layer2", "layer4"]) as taps,
        FeatureTaps(model, ["fc"], pre=True) as pre,
    ):
        logits = model(x)
        assert taps["layer2"].shape == (2, 128, 4, 4)
        assert taps["layer4"].shape == (2, 512, 1, 1)
        assert pre["fc"].shape == (2, 512)  # the penultimate embedding
        assert torch.allclose(model.fc(pre["fc"]), logits)
    assert not model.layer2._forward_hooks and not model.fc._forward_pre_hooks


def test_unknown_layer_lists_valid_ones() -> None:
    with pytest.raises(ConfigError, match="no layer 'layer9'") as e:
        FeatureTaps(create("resnet18", 10), ["layer9"])
    assert "layer" in e.value.hint
