"""Models that cannot take the data's image size are refused before any work, with a size
that works (kdpipe/models/input_check.py)."""

from __future__ import annotations

import pytest
import torch

from kdpipe.core.errors import ConfigError
from kdpipe.models import check_input_size


def test_a_model_that_takes_the_size_passes_and_leaves_the_rng_alone() -> None:
    before = torch.get_rng_state()
    # regnet's builder computes on tensors, so it is built on the CPU and then moved
    for name in ("resnet18", "regnet_x_400mf", "mobilenet_v3_small"):
        check_input_size("student", name, 10, (3, 32, 32))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    ("name", "size", "fits"),
    [("alexnet", 32, 64), ("inception_v3", 32, 96), ("vit_b_16", 64, 224)],
)
def test_a_model_too_small_or_fixed_names_a_size_that_works(
    name: str, size: int, fits: int
) -> None:
    with pytest.raises(ConfigError) as e:
        check_input_size("student", name, 10, (3, size, size))
    assert f"student {name} cannot take 3x{size}x{size} images" in e.value.message
    assert f"--image-size {fits} " in e.value.hint
    # and the size named really works, on real tensors
    check_input_size("student", name, 10, (3, fits, fits))


def test_a_refusal_is_confirmed_on_the_cpu(tmp_path) -> None:
    """A model whose forward the meta device cannot run (it reads a value) is not refused."""
    f = tmp_path / "net.py"
    f.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(3, num_classes)\n"
        "    def forward(self, x):\n"
        "        if x.mean().item() > 1e9:\n"
        "            raise RuntimeError('never')\n"
        "        return self.fc(x.mean((2, 3)))\n"
    )
    check_input_size("student", f"{f}:Net", 10, (3, 8, 8))
