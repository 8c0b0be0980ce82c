"""Feature taps: forward hooks on named modules of unmodified models (no model surgery).

    with FeatureTaps(model, ["layer2", "layer3"]) as taps:
        logits = model(x)
        f2, f3 = taps["layer2"], taps["layer3"]

`pre=True` captures a module's *input* instead of its output (used for pre-activation
features, e.g. the input of a ReLU). Export never sees the hooks: they are removed on exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType

from torch import Tensor, nn

from kdpipe.errors import ConfigError, did_you_mean


def module_names(model: nn.Module) -> list[str]:
    return [n for n, _ in model.named_modules() if n]


class FeatureTaps:
    def __init__(self, model: nn.Module, layers: Sequence[str], pre: bool = False) -> None:
        names = dict(model.named_modules())
        for layer in layers:
            if layer not in names or not layer:
                raise ConfigError(
                    f"{type(model).__name__} has no layer '{layer}'",
                    did_you_mean(layer, module_names(model))
                    or f"valid layers include: {', '.join(module_names(model)[:12])}",
                )
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for layer in layers:
            module = names[layer]
            if pre:
                hook = module.register_forward_pre_hook(self._save_input(layer))
            else:
                hook = module.register_forward_hook(self._save_output(layer))
            self._handles.append(hook)

    def _save_output(self, layer: str):
        def hook(_m: nn.Module, _inp: tuple, out: Tensor) -> None:
            self.features[layer] = out

        return hook

    def _save_input(self, layer: str):
        def hook(_m: nn.Module, inp: tuple) -> None:
            self.features[layer] = inp[0]

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
