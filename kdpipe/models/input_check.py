"""Does a model take the data's images? Asked before any training starts.

Some architectures need a minimum input (alexnet pools 32x32 down to nothing, inception_v3
needs 75x75) or a fixed one (torchvision's ViTs and MaxViT: 224). Without this check such a
run trains the teacher for minutes and then stops on an internal error. The forward runs on
the meta device (shapes only: no memory, no arithmetic), so even large models are checked in
well under a second; a failure there is confirmed by a real forward on the CPU before the run
is refused, because a model may use an op the meta device cannot run.
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.core.errors import ConfigError
from kdpipe.models.zoo import create, on_meta

# Sizes tried, smallest first, to name one the model takes in the hint.
TRY_SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)


def _build_on_meta(name: str, num_classes: int) -> nn.Module:
    model = on_meta(lambda: create(name, num_classes)) or create(name, num_classes).to("meta")
    return model.eval()


def _problem(model: nn.Module, input_size: tuple[int, ...], device: str) -> str | None:
    """Why `model` cannot take one image of `input_size` (C, H, W), or None if it can."""
    x = torch.zeros(1, *input_size, device=device)
    try:
        with torch.no_grad():
            model(x)
    except NotImplementedError:  # an op without a meta kernel: this cannot tell
        return None
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as e:
        lines = str(e).strip().splitlines()
        return (lines[0] if lines else type(e).__name__).rstrip(".!")
    return None


def check_input_size(role: str, name: str, num_classes: int, input_size: tuple[int, ...]) -> None:
    """Raise ConfigError (exit 2) naming the smallest tried size that works, when the model
    `name` cannot take images of `input_size`. The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        _check(role, name, num_classes, input_size)


def _check(role: str, name: str, num_classes: int, input_size: tuple[int, ...]) -> None:
    model = _build_on_meta(name, num_classes)
    if _problem(model, input_size, "meta") is None:
        return
    real = create(name, num_classes).eval()
    problem = _problem(real, input_size, "cpu")
    if problem is None:  # only the meta device objected
        return
    c, h, w = input_size
    fits = next(
        (s for s in TRY_SIZES if s > min(h, w) and _problem(model, (c, s, s), "meta") is None),
        None,
    )
    hint = (
        f"pass --image-size {fits} (the smallest size tried that {name} takes), "
        f"or choose another {role}"
        if fits
        else f"choose another {role}"
    )
    raise ConfigError(f"{role} {name} cannot take {c}x{h}x{w} images: {problem}", hint)
