"""Composition of methods: `terms: {kd: 0.9, ce: 0.1, at: 1000}` is the weighted sum of each
method's own loss (`Distiller.loss`, unit weight), computed from one shared forward pass, with
every term logged separately. Each method keeps its connectors and its hyperparameters
(`params` keys are `METHOD.NAME`, e.g. `at.p`, or a bare NAME that the method has)."""

from __future__ import annotations

from torch import Tensor, nn

from kdpipe.core.errors import ConfigError
from kdpipe.distill.base import Batch, Distiller


class Composite(Distiller):
    name = "composite"
    paper = "weighted sum of methods"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        parts: dict[str, type[Distiller]],
        weights: dict[str, float],
        params: dict[str, float],
        **kwargs,  # type: ignore[no-untyped-def]
    ) -> None:
        for method_name, cls in parts.items():
            if not cls.composable:
                raise ConfigError(
                    f"method '{method_name}' runs its own training step and cannot be composed",
                    "use it alone with --method",
                )
        self.weights = dict(weights)
        self.parts_cls = parts
        self.needs_teacher = any(c.needs_teacher for c in parts.values())  # type: ignore[misc]
        super().__init__(student, teacher, **kwargs)
        own = split_params(parts, params)
        self.parts = nn.ModuleDict(
            {m: cls(student, teacher, **kwargs, params=own.get(m, {})) for m, cls in parts.items()}
        )

    @classmethod
    def check(cls, parts: dict[str, type[Distiller]], params: dict[str, float]) -> None:
        """Every parameter routed and valid (kdpipe.api.validate, before any training)."""
        for m, part_params in split_params(parts, params).items():
            parts[m].checked_params(part_params)

    def all_kinds(self) -> tuple[str, ...]:
        kinds = [k for cls in self.parts_cls.values() for k in cls.kinds]
        return tuple(dict.fromkeys(kinds))

    def loss(self, b: Batch) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for m, part in self.parts.items():
            assert isinstance(part, Distiller)
            part.progress, part.epoch, part.stage = self.progress, self.epoch, part.stages[-1].name
            for key, value in part.loss(b).items():
                out[key if key not in out else f"{m}.{key}"] = self.weights[m] * value
        return out

    def terms(self, b: Batch) -> dict[str, Tensor]:
        return self.loss(b)


def split_params(
    parts: dict[str, type[Distiller]], params: dict[str, float]
) -> dict[str, dict[str, float]]:
    """`METHOD.NAME` goes to METHOD; a bare NAME to every composed method that has it."""
    own: dict[str, dict[str, float]] = {}
    for key, value in params.items():
        method_name, dot, param = key.partition(".")
        targets = [method_name] if dot else [m for m, c in parts.items() if key in c.defaults]
        if dot and method_name not in parts or not targets:
            raise ConfigError(
                f"parameter '{key}' matches none of the composed methods",
                f"write METHOD.NAME with METHOD one of: {', '.join(parts)}",
            )
        for m in targets:
            own.setdefault(m, {})[param if dot else key] = value
    return own
