"""One resolver for every model: `create(name, num_classes, weights)`.

Names are torchvision's classification builders (`resnet50`, `mobilenet_v3_small`, ...) or a
user's own model, `path/to/file.py:Name` (custom.py). The classifier head is sized to
`num_classes`. Nothing is ever downloaded: `weights` is a local file, or `torchvision`
(`torchvision:IMAGENET1K_V1`, ...) for ImageNet weights already in torchvision's cache
(`weights_file`). `create_pretrained` starts from weights trained for other classes: all but
the classifier loaded, the classifier fresh.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from kdpipe.core.errors import ModelError, closest
from kdpipe.models import custom
from kdpipe.models.heads import find_head, replace_head
from kdpipe.models.weights import load_into, load_state_dict_file

# Residual families whose last BN per block can start at zero, which lets deep nets train
# from scratch on small data (resnet50 on digits: ~97 % with it, stalls near 61 % without).
_ZERO_INIT = ("resnet", "resnext", "wide_resnet")


def available() -> list[str]:
    """Every torchvision classification model name."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def check_name(name: str) -> None:
    if custom.is_file_model(name):
        custom.builder(name)
        return
    if name.endswith(".py"):
        raise ModelError(f"model file '{name}' names no class", f"write it as {name}:ClassName")
    names = available()
    if name not in names:
        near = closest(name, names) or [n for n in names if n.startswith(name[:3])][:5]
        hint = (
            f"closest valid names: {', '.join(near)}"
            if near
            else "run `kdpipe models` to list them"
        )
        raise ModelError(f"unknown model '{name}'", hint)


def create(name: str, num_classes: int, weights: str | Path | None = None) -> nn.Module:
    """Build `name` with a `num_classes` head; load `weights` (a file, or torchvision's cached
    weights: `weights_file`), which must fit it exactly."""
    check_name(name)
    file_model = custom.is_file_model(name)
    path = None if weights is None else weights_file(name, weights)
    if path is not None and not file_model:
        return _torchvision_model_with(name, num_classes, path)
    model = custom.build(name, num_classes) if file_model else _torchvision_model(name, num_classes)
    if path is not None:
        load_into(model, load_state_dict_file(path), source=str(path))
    return model


def create_pretrained(name: str, num_classes: int, weights: str | Path) -> tuple[nn.Module, bool]:
    """(`name` holding `weights`, whether its classifier is fresh): weights trained for another
    number of classes (ImageNet's 1000) load into everything but the classifier, which is
    replaced by a new one for `num_classes` (to be trained). Anything else that does not fit
    is refused as `create` refuses it."""
    path = weights_file(name, weights)
    trained_for = classes_in(name, path, num_classes)
    if trained_for == num_classes:
        return create(name, num_classes, path), False
    model = create(name, trained_for, path)
    replace_head(model, num_classes)
    return model, True


def classes_in(name: str, path: Path, default: int) -> int:
    """The number of classes the classifier in the weights file `path` scores (`default`
    when the file has no tensor where `name`'s classifier is: load_into then names what is
    missing). Asked several times a run (fingerprint, checks, the stage), answered once per
    version of the file: reading a ViT-L's takes seconds."""
    check_name(name)
    stat = path.stat() if path.is_file() else None
    key = (stat.st_size, stat.st_mtime_ns) if stat else None
    return _classes_in(name, str(path), default, key)


@functools.lru_cache(maxsize=16)
def _classes_in(name: str, path: str, default: int, _version: tuple[int, int] | None) -> int:
    build = (  # only the classifier's name is read: torchvision's builder, on the meta device
        (lambda: custom.build(name, default))
        if custom.is_file_model(name)
        else (
            lambda: torchvision.models.get_model(name, weights=None, **_build_args(name, default))
        )
    )
    model = on_meta(build) or build()
    head = find_head(model)
    weight = load_state_dict_file(Path(path)).get(f"{head[0]}.weight") if head else None
    return int(weight.shape[0]) if weight is not None and weight.dim() >= 1 else default


def torchvision_tag(weights: str | Path) -> str | None:
    """The torchvision weights a --teacher-weights / --student-weights value names:
    `torchvision` -> "DEFAULT", `torchvision:IMAGENET1K_V1` -> that name; None for a file."""
    text = str(weights)
    if text == "torchvision":
        return "DEFAULT"
    if text.startswith("torchvision:"):
        return text.partition(":")[2]
    return None


def weights_label(name: str, weights: str | Path) -> str:
    """How messages name weights: the file, or "torchvision's IMAGENET1K_V2 weights"."""
    tag = torchvision_tag(weights)
    if tag is None:
        return str(weights)
    members = _published(name)
    return f"torchvision's {members[tag].name if tag in members else tag} weights"


def _published(name: str) -> dict[str, Any]:
    """torchvision's weights for the model `name`, by tag (DEFAULT among them)."""
    return torchvision.models.get_model_weights(name).__members__  # type: ignore[attr-defined]


def torchvision_crop(name: str, weights: str | Path) -> tuple[int, int] | None:
    """(resize, crop) of the evaluation transform torchvision publishes with the weights a
    `torchvision[:TAG]` value names (256, 224 for most ImageNet weights); None for a file."""
    tag = torchvision_tag(weights)
    if tag is None or custom.is_file_model(name):
        return None
    members = _published(name)
    if tag not in members:
        return None
    preset = members[tag].transforms()
    resize, crop = getattr(preset, "resize_size", None), getattr(preset, "crop_size", None)
    if not (resize and crop):
        return None
    return int(resize[0]), int(crop[0])


def weights_file(name: str, weights: str | Path) -> Path:
    """The file `weights` names: itself, or for `torchvision[:TAG]` the file torchvision's
    download of `name`'s ImageNet weights left in its cache ($TORCH_HOME/hub/checkpoints)."""
    tag = torchvision_tag(weights)
    if tag is None:
        return Path(weights)
    if custom.is_file_model(name):
        raise ModelError(f"torchvision has no weights for {name}", "pass a weights file")
    check_name(name)
    members = _published(name)
    if tag not in members:
        raise ModelError(
            f"torchvision has no {tag} weights for {name}",
            f"use one of: {', '.join(f'torchvision:{m}' for m in members)}",
        )
    url = members[tag].url
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not cached.is_file():
        present = [
            f"torchvision:{m}"
            for m, w in members.items()
            if m != "DEFAULT" and (cached.parent / w.url.rsplit("/", 1)[-1]).is_file()
        ]
        hint = f"{' and '.join(present)} {'is' if len(present) == 1 else 'are'} there; or "
        raise ModelError(
            f"torchvision's {members[tag].name} weights for {name} are not in the local cache "
            f"({cached})",
            (hint if present else "")
            + f"kdpipe never downloads: copy {url.rsplit('/', 1)[-1]} there (or set TORCH_HOME), "
            "or pass a weights file",
        )
    return cached


def _torchvision_model_with(name: str, num_classes: int, weights: Path) -> nn.Module:
    """`name` holding the tensors of `weights`, built on the meta device: the random
    initialization it would otherwise compute, only to overwrite, took 0.16 s of a 0.27 s
    resnet50 load (seconds for a ViT-L). RegNet cannot be built there (its constructor reads
    values), and a model left with a tensor the file did not fill would be unusable: both are
    built the ordinary way."""
    state = _without_auxiliary_heads(name, load_state_dict_file(weights))
    model = on_meta(
        lambda: torchvision.models.get_model(name, weights=None, **_build_args(name, num_classes))
    )
    if model is not None:
        load_into(model, state, source=str(weights), assign=True)
        tensors = [*model.parameters(), *model.buffers()]
        if not any(t.is_meta for t in tensors):
            return model
    model = _torchvision_model(name, num_classes)
    load_into(model, state, source=str(weights))
    return model


# Training-only side classifiers kdpipe builds its Inception and GoogLeNet without
# (_build_args: aux_logits=False); torchvision's ImageNet files hold them.
_AUXILIARY = {"inception": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}


def _without_auxiliary_heads(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefixes = next((p for family, p in _AUXILIARY.items() if name.startswith(family)), ())
    if not prefixes or not any(k.startswith(prefixes) for k in state):
        return state
    kept = type(state)((k, v) for k, v in state.items() if not k.startswith(prefixes))
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        kept._metadata = {  # type: ignore[attr-defined]
            k: v for k, v in meta.items() if not (k + ".").startswith(prefixes)
        }
    return kept


def on_meta(build: Callable[[], nn.Module]) -> nn.Module | None:
    """`build()` on the meta device (shapes only, no memory, no init arithmetic), or None when
    a constructor computes with values (an op without a meta kernel: RegNet's widths)."""
    try:
        with torch.device("meta"):
            return build()
    except (NotImplementedError, RuntimeError):
        return None


def _build_args(name: str, num_classes: int) -> dict:
    kwargs: dict = {"num_classes": num_classes}
    if name.startswith(_ZERO_INIT):
        kwargs["zero_init_residual"] = True
    if name.startswith(("inception", "googlenet")):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    return kwargs


def _torchvision_model(name: str, num_classes: int) -> nn.Module:
    model = torchvision.models.get_model(name, weights=None, **_build_args(name, num_classes))
    _tame_head_init(model)
    return model


def _tame_head_init(model: nn.Module) -> None:
    """MNASNet and EfficientNet scale their classifier's initial weights by 1/sqrt(classes),
    tuned for ImageNet's 1000: with 10 classes the first logits have a std near 10 (CE 15
    where chance is 2.3) and the student never recovers in a short schedule (mnasnet0_5 on
    digits: 29 %). A head initialized wider than PyTorch's default Linear bound 1/sqrt(fan_in)
    is reset to that default; heads already within it (ResNet, MobileNet, RegNet) are kept."""
    head = find_head(model)
    if head is None:
        return
    weight, reset = getattr(head[1], "weight", None), getattr(head[1], "reset_parameters", None)
    if isinstance(weight, torch.Tensor) and callable(reset):
        if float(weight.detach().std()) > weight[0].numel() ** -0.5:
            reset()
