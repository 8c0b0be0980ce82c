"""A classifier's head: found by shape in any model, and swapped for another class count."""

from __future__ import annotations

from torch import nn

from kdpipe.core.errors import ModelError


def find_head(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The classifier: the last Linear layer or, in a model without one, the last 1x1 Conv2d
    (SqueezeNet classifies with one); None when there is neither."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    convs = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)
    ]
    found = linears or convs
    return found[-1] if found else None


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the classifier (find_head) for a fresh one with `num_classes` outputs."""
    head = find_head(model)
    if head is None:
        raise ModelError(
            f"{type(model).__name__} has no Linear or 1x1-conv classifier to resize",
            "give the model a num_classes argument, or end it in a Linear layer",
        )
    path, layer = head
    if isinstance(layer, nn.Linear):
        if layer.out_features == num_classes:
            return
        fresh: nn.Module = nn.Linear(layer.in_features, num_classes)
    elif isinstance(layer, nn.Conv2d):
        if layer.out_channels == num_classes:
            return
        fresh = nn.Conv2d(layer.in_channels, num_classes, kernel_size=1)
    parent = model.get_submodule(path.rpartition(".")[0]) if "." in path else model
    setattr(parent, path.rpartition(".")[2], fresh)
