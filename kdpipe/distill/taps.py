"""Feature taps: forward hooks on named modules of unmodified models (no model surgery).

    with FeatureTaps(model, ["layer2", "layer4.1.relu:in"]) as taps:
        logits = model(x)
        f2, pre4 = taps["layer2"], taps["layer4.1.relu:in"]

A name ending in ":in" captures the module's *input* instead of its output (pre-activation
features: the input of a stage's last ReLU). Export never sees the hooks: they are removed
on exit.

`default_layers` finds, for any stock classifier, the layers methods tap by default:
  stages     the last module at each spatial resolution of the trunk (ResNet layer1..4,
             the MobileNet/EfficientNet/VGG/DenseNet/RegNet/ConvNeXt block that ends each
             resolution), at most the deepest four;
  pre        the same stages before their final activation (AB needs pre-ReLU values);
  embedding  the input of the last Linear layer: the penultimate embedding (for a model
             whose classifier is a convolution, SqueezeNet, the input of its last conv;
             methods average such maps over space).
It runs the model once on a 224x224 probe and reads the shapes, so it needs no table of
architectures and works for any model built from torchvision-style blocks.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from types import TracebackType

import torch
from torch import Tensor, nn

from kdpipe.core.errors import ConfigError, did_you_mean
from kdpipe.models.heads import find_head

KINDS = ("stages", "pre", "embedding")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.Mish)
POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PROBE_SIZE = 224
MAX_STAGES = 4


def module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Raise a ConfigError naming valid layers when a requested layer does not exist."""
    names = dict(model.named_modules())
    for spec in layers:
        layer = spec.removesuffix(":in")
        if not layer or layer not in names:
            raise ConfigError(
                f"{type(model).__name__} has no layer '{layer}'",
                did_you_mean(layer, module_names(model))
                or f"valid layers include: {', '.join(module_names(model)[:12])}",
            )


class FeatureTaps:
    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        check_layers(model, layers)
        names = dict(model.named_modules())
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for spec in dict.fromkeys(layers):
            module = names[spec.removesuffix(":in")]
            if spec.endswith(":in"):
                inplace = bool(getattr(module, "inplace", False))
                hook = module.register_forward_pre_hook(self._save_input(spec, inplace))
            else:
                hook = module.register_forward_hook(self._save_output(spec))
            self._handles.append(hook)

    def _save_output(self, layer: str):
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            self.features[layer] = out

        return hook

    def _save_input(self, layer: str, inplace: bool):
        # A module called several times (a block's shared ReLU) keeps its last input; an
        # in-place activation would overwrite the saved input, so that one is copied first.
        def hook(_m: nn.Module, inp: tuple) -> None:
            self.features[layer] = inp[0].clone() if inplace else inp[0]

        return hook

    def __getitem__(self, layer: str) -> Tensor:
        return self.features[layer]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()


def _trunk(model: nn.Module) -> tuple[str, nn.Module]:
    """The container whose children are the network's stages (MaxViT's `blocks`, a ViT's
    `encoder.layers` of transformer blocks)."""
    for name in ("features", "trunk_output", "layers", "blocks", "encoder.layers"):
        try:
            child = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(child, nn.Sequential | nn.ModuleList):
            return name, child
    return "", model


# One probe per model: every feature kind, and every method of a composition, reads the same.
_probes: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[dict[str, tuple], list[str]]]] = (
    weakref.WeakKeyDictionary()
)


def _call_order(model: nn.Module, in_channels: int) -> tuple[dict[str, tuple], list[str]]:
    """Output shape of every module and the order leaf modules ran, from one probe forward."""
    known = _probes.setdefault(model, {})
    if in_channels not in known:
        known[in_channels] = _probe(model, in_channels)
    return known[in_channels]


def _probe(model: nn.Module, in_channels: int) -> tuple[dict[str, tuple], list[str]]:
    shapes: dict[str, tuple] = {}
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m: nn.Module, _i: tuple, out: object, name: str = name) -> None:
            if isinstance(out, Tensor):
                shapes[name] = tuple(out.shape)
            if not any(True for _ in _m.children()):
                order.append(name)

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, PROBE_SIZE, PROBE_SIZE))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes, order


def is_channels_last(shape: tuple) -> bool:
    """A 4-D feature of a square input laid out (N, H, W, C), as Swin's stages are, not
    (N, C, H, W): H == W tells the layouts apart (ambiguous only when C == H == W)."""
    return len(shape) == 4 and shape[1] == shape[2] != shape[3]


def as_feature_map(feature: Tensor) -> Tensor:
    """(N, C, H, W) from a square input's feature, whichever layout the model computed it in:
    Swin's (N, H, W, C), or a ViT's tokens (N, 1 + H*W, C) without the class token."""
    if feature.dim() == 3 and (side := token_grid(feature.shape[1])):
        patches = feature[:, -side * side :, :]  # the class token, if any, comes first
        return patches.transpose(1, 2).reshape(feature.shape[0], feature.shape[2], side, side)
    return feature.permute(0, 3, 1, 2) if is_channels_last(tuple(feature.shape)) else feature


def token_grid(tokens: int) -> int:
    """The side of the square patch grid behind a ViT's `tokens` (one class token or none),
    or 0 when the tokens do not form one."""
    for patches in (tokens - 1, tokens):
        side = math.isqrt(max(patches, 0))
        if side > 1 and side * side == patches:
            return side
    return 0


def stage_layers(model: nn.Module, in_channels: int = 3) -> list[str]:
    shapes, order = _call_order(model, in_channels)
    prefix, trunk = _trunk(model)
    last_at: dict[tuple, str] = {}
    blocks: list[str] = []  # transformer blocks: tokens, one resolution throughout
    for child, module in trunk.named_children():
        name = f"{prefix}.{child}" if prefix else child
        shape = shapes.get(name)
        if shape is not None and len(shape) == 3 and token_grid(shape[1]):
            blocks.append(name)
        if shape is None or len(shape) != 4 or isinstance(module, (*POOLS, nn.Dropout)):
            continue
        spatial = shape[1:3] if is_channels_last(shape) else shape[2:]
        if spatial == (1, 1) and last_at:
            break  # past the global pool (Inception's trunk ends with pool, dropout)
        last_at[spatial] = name  # later children at the same resolution replace earlier ones
    if blocks and not last_at:
        # One resolution: the blocks ending each quarter of the depth, as CNN stages would.
        n = len(blocks)
        return list(
            dict.fromkeys(blocks[max(0, round(n * k / MAX_STAGES) - 1)] for k in (1, 2, 3, 4))
        )
    return list(last_at.values())[-MAX_STAGES:]


def pre_activation(model: nn.Module, stage: str, order: list[str]) -> str:
    """The stage's input to its final activation (`name:in`), or the stage itself when its
    last operation is not an activation (MobileNet's linear bottlenecks, ConvNeXt)."""
    modules = dict(model.named_modules())
    inside = [n for n in order if n == stage or n.startswith(stage + ".")]
    if inside and isinstance(modules[inside[-1]], ACTIVATIONS):
        return inside[-1] + ":in"
    return stage


def embedding_layer(model: nn.Module) -> str:
    head = find_head(model)  # SqueezeNet's 1x1-conv classifier counts: its input map
    if head is None:
        raise ConfigError(
            f"{type(model).__name__} has no Linear or 1x1-conv classifier to take an embedding "
            "from",
            "use a method on stage features, or a model with a Linear head",
        )
    return head[0] + ":in"


def flat_embedding(feature: Tensor) -> Tensor:
    """One vector per sample: a conv classifier's input map is averaged over space (what a
    Linear head's global pool does), anything else is flattened."""
    return feature.mean((2, 3)) if feature.dim() == 4 else feature.flatten(1)


def default_layers(model: nn.Module, kind: str, stages: Sequence[str] | None = None) -> list[str]:
    """Layer specs for one kind of feature; `stages` replaces the detected stage list."""
    if kind == "embedding":
        return [embedding_layer(model)]
    chosen = list(stages) if stages else stage_layers(model)
    if kind == "stages":
        return chosen
    if kind == "pre":
        _, order = _call_order(model, 3)
        return [s if s.endswith(":in") else pre_activation(model, s, order) for s in chosen]
    raise ValueError(f"unknown feature kind {kind!r}; kinds are {KINDS}")
