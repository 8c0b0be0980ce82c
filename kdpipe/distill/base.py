"""The Distiller contract every method implements (design.md).

A Distiller owns the student, a frozen teacher and any extra trainable modules (regressors,
connectors, discriminators). `forward` returns the student's logits and the named, already
weighted loss terms; the trainer sums them and logs each. `student()` hands back the plain
student for export: no wrapper, no teacher, no hooks, no extras.

One training step's forward pass is shared: the base class runs the student (and the teacher,
unless its logits come from the cache) with feature taps for every kind of feature the method
declares in `kinds`, and hands a `Batch` to the method's `terms`. A method therefore only
writes its formula. `loss` is the method's own distillation term(s) at unit weight, which is
what composition (`kd: 0.9, ce: 0.1, at: 1000`) weighs; `terms` is the method's standalone
recipe (its weight, plus cross-entropy where its paper adds it).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdpipe.core.config import DistillConfig
from kdpipe.core.errors import ConfigError, did_you_mean
from kdpipe.distill.data_parallel import gather_rows
from kdpipe.distill.stepper import Stepper
from kdpipe.distill.taps import (
    FeatureTaps,
    as_feature_map,
    check_layers,
    default_layers,
    flat_embedding,
)


@dataclass(frozen=True)
class Stage:
    """One training phase. Methods with an initialization phase (FitNets hints, AB, FT's
    paraphraser, FSP) list it before the main one; it runs `epochs_fraction` of the epochs."""

    name: str
    epochs_fraction: float = 1.0


@dataclass
class Layers:
    """Which layers to tap: user-named stage layers for teacher and student (or None)."""

    teacher: Sequence[str] | None = None
    student: Sequence[str] | None = None


@dataclass
class Batch:
    """What one step saw: inputs, both models' logits and the tapped features by kind."""

    images: Tensor
    labels: Tensor  # -1 marks an unlabeled (transfer-set) sample
    z_s: Tensor
    z_t: Tensor | None
    s: dict[str, list[Tensor]] = field(default_factory=dict)
    t: dict[str, list[Tensor]] = field(default_factory=dict)

    def targets(self) -> Tensor:
        """Labels where known, the teacher's prediction for unlabeled samples."""
        if self.z_t is None:
            return self.labels
        return torch.where(self.labels >= 0, self.labels, self.z_t.argmax(1))


def ce_loss(z: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy over the labeled samples (label -1 = unlabeled); 0 when none are.
    Written without reading the mask on the host, which would stall a GPU every step."""
    total = F.cross_entropy(
        z, labels, ignore_index=-1, reduction="sum", label_smoothing=label_smoothing
    )
    return total / (labels >= 0).sum().clamp(min=1)


class Distiller(nn.Module, abc.ABC):
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    defaults: ClassVar[dict[str, float]] = {}
    needs_teacher: ClassVar[bool] = True
    # Feature kinds (taps.KINDS) the method reads; none means logits only, which the trainer
    # may then cache per sample instead of running the teacher every step.
    kinds: ClassVar[tuple[str, ...]] = ()
    # The hyperparameter that weighs `loss` in the standalone recipe (None: weight 1).
    weight_key: ClassVar[str | None] = None
    stage_names: ClassVar[tuple[tuple[str, float], ...]] = (("train", 1.0),)
    stages_doc: ClassVar[str] = ""  # set where the stages depend on parameters
    reads_doc: ClassVar[str] = ""  # set where `kinds` does not say it (input gradients)
    # False for methods with their own forward pass (Jacobian, DML): they cannot share a
    # step with other terms in a composition.
    composable: ClassVar[bool] = True
    # True for TAKD: the stage trains a chain through `--assistant` models first.
    uses_assistants: ClassVar[bool] = False
    # True for DML: `--peers` are students trained beside the student.
    uses_peers: ClassVar[bool] = False

    @classmethod
    def built_with(cls, d: DistillConfig, student_arch: str, num_classes: int) -> dict[str, Any]:
        """Constructor arguments the method builds from the options besides the student and
        the teacher (DML: its peers)."""
        return {}

    @classmethod
    def takes_teacher(cls, params: Mapping[str, float]) -> bool:
        """Whether the trained teacher is handed to the method (DML: only as a peer)."""
        return cls.needs_teacher

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        *,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        layers: Layers | None = None,
        params: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.params: dict[str, float] = self.checked_params(params or {})
        if self.needs_teacher and teacher is None:
            raise ConfigError(f"method '{self.name}' needs a teacher", "pass --teacher NAME")
        self.student_model = student
        self.teacher_model = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.input_shape = input_shape
        self.user_layers = layers or Layers()
        self.stages: list[Stage] = [Stage(n, f) for n, f in self.stage_names]
        self.stage = self.stages[-1].name
        self.progress = 0.0  # fraction of the current stage done, set by the trainer
        self.stepper = Stepper()  # the trainer installs one for its device and precision
        self.epoch = 0  # 1-based epoch within the current stage, set by the trainer
        # Monitored values that are not part of the loss (a discriminator's own loss); tensors
        # are read the way loss terms are (kdpipe.distill.losslog), floats as they are.
        self.logged: dict[str, float | Tensor] = {}
        self.layer_names: dict[str, dict[str, list[str]]] = {"s": {}, "t": {}}
        for kind in self.all_kinds():
            self.layer_names["s"][kind] = self._resolve(student, kind, self.user_layers.student)
            if teacher is not None:
                self.layer_names["t"][kind] = self._resolve(teacher, kind, self.user_layers.teacher)
        self._pair_layers()

    # ---- what subclasses write -------------------------------------------------------
    @abc.abstractmethod
    def loss(self, b: Batch) -> dict[str, Tensor]:
        """The method's distillation term(s) at unit weight."""

    def terms(self, b: Batch) -> dict[str, Tensor]:
        """The standalone recipe: weight * loss, plus CE weighted by the `ce` parameter."""
        w = self.params[self.weight_key] if self.weight_key else 1.0
        out = {k: w * v for k, v in self.loss(b).items()}
        if self.params.get("ce", 0.0):
            out["ce"] = self.params["ce"] * ce_loss(b.z_s, b.labels)
        return out

    def whole_batch(self, rows: Tensor) -> Tensor:
        """`rows` of every torchrun rank while training (rank order; gradients go back to the
        rank that owns them: data_parallel.gather_rows), else `rows`. For losses that relate
        the samples of a batch to each other, which would otherwise see each rank's share of
        it: on N processes they compute what one process computes over the same global batch.
        Never gathered in evaluation, which one rank may do alone."""
        return gather_rows(rows)[0] if self.training else rows

    @classmethod
    def reads(cls) -> str:
        """What the method reads from the models, for `kdpipe methods`."""
        return cls.reads_doc or ",".join(cls.kinds) or "logits"

    @classmethod
    def checked_params(cls, params: Mapping[str, float]) -> dict[str, float]:
        """The defaults updated with `params`; an unknown name or an out-of-range value is a
        ConfigError (kdpipe.api.validate calls this before any training starts)."""
        unknown = [k for k in params if k not in cls.defaults]
        if unknown:
            hint = did_you_mean(unknown[0], cls.defaults) or (
                f"'{cls.name}' takes: {', '.join(cls.defaults) or 'no parameters'}"
            )
            raise ConfigError(f"method '{cls.name}' has no parameter '{unknown[0]}'", hint)
        merged = {**cls.defaults, **params}
        for key, value in merged.items():
            if not math.isfinite(value) or (key in ("T", "tau") and value <= 0):
                raise ConfigError(
                    f"method '{cls.name}' parameter {key}={value} is out of range",
                    f"{key} must be a finite number" + (" above 0" if key in ("T", "tau") else ""),
                )
        return merged

    @classmethod
    def stage_summary(cls) -> str:
        """The training phases, for `kdpipe methods` (some depend on parameters)."""
        return cls.stages_doc or " -> ".join(n for n, _ in cls.stage_names)

    # ---- features ----------------------------------------------------------------------
    def all_kinds(self) -> tuple[str, ...]:
        return self.kinds

    @property
    def logits_only(self) -> bool:
        return not self.all_kinds()

    def _resolve(self, model: nn.Module, kind: str, named: Sequence[str] | None) -> list[str]:
        if named and kind != "embedding":
            check_layers(model, named)
        return default_layers(model, kind, named)

    def _pair_layers(self) -> None:
        """One teacher layer per student layer: detected stage lists of different lengths
        keep their deepest common count; user-named lists must match."""
        if self.teacher_model is None:
            return
        for kind, names in self.layer_names["s"].items():
            t_names = self.layer_names["t"].get(kind, [])
            if not (self.user_layers.student or self.user_layers.teacher) and names and t_names:
                k = min(len(names), len(t_names))
                names = self.layer_names["s"][kind] = names[-k:]
                t_names = self.layer_names["t"][kind] = t_names[-k:]
            if len(names) != len(t_names):
                raise ConfigError(
                    f"{len(t_names)} teacher layers but {len(names)} student layers for '{kind}'",
                    "name as many --teacher-layers as --student-layers",
                )

    def probe_shapes(self) -> tuple[dict[str, list[torch.Size]], dict[str, list[torch.Size]]]:
        """Feature shapes of student and teacher at the run's input size (for connectors)."""
        x = torch.zeros(2, *self.input_shape)
        shapes: list[dict[str, list[torch.Size]]] = []
        for side, model in (("s", self.student_model), ("t", self.teacher_model)):
            if model is None:
                shapes.append({})
                continue
            was = model.training
            model.eval()
            with torch.no_grad():
                feats = self._tapped(model, side, x)[1]
            model.train(was)
            shapes.append({k: [f.shape for f in v] for k, v in feats.items()})
        return shapes[0], shapes[1]

    def layer_connectors(self, kind: str) -> nn.ModuleList:
        """One 1x1 conv + BN per tapped layer of `kind`, student channels to teacher channels."""
        s_shapes, t_shapes = self.probe_shapes()
        pairs = zip(s_shapes[kind], t_shapes[kind], strict=True)
        return nn.ModuleList(conv_connector(s[1], t[1]) for s, t in pairs)

    def _tapped(self, model: nn.Module, side: str, x: Tensor) -> tuple[Tensor, dict]:
        names = self.layer_names[side]
        specs = [n for kind_names in names.values() for n in kind_names]
        if not specs:
            return model(x), {}
        with FeatureTaps(model, specs) as taps:
            z = model(x)
        feats = {kind: [taps[n] for n in kind_names] for kind, kind_names in names.items()}
        if "embedding" in feats:
            feats["embedding"] = [flat_embedding(f) for f in feats["embedding"]]
        if x.shape[-1] == x.shape[-2]:  # Swin's (N, H, W, C), ViT's tokens: methods read NCHW
            feats = {
                k: v if k == "embedding" else [as_feature_map(f) for f in v]
                for k, v in feats.items()
            }
        return z, feats

    # ---- the shared step ---------------------------------------------------------------
    def run_models(self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None) -> Batch:
        z_s, s_feats = self._tapped(self.student_model, "s", images)
        z_t, t_feats = teacher_logits, dict[str, list[Tensor]]()
        if self.teacher_model is not None and (z_t is None or self.layer_names["t"]):
            with torch.no_grad(), self.stepper.teacher_autocast():
                z_t, t_feats = self._tapped(self.teacher_model, "t", images)
            z_t, t_feats = z_t.float(), {k: [f.float() for f in v] for k, v in t_feats.items()}
        return Batch(images, labels, z_s, z_t, s_feats, t_feats)

    def forward(
        self, images: Tensor, labels: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Student logits and the named, weighted loss terms. `teacher_logits` comes from the
        cache when the trainer has one; otherwise the teacher runs here."""
        b = self.run_models(images, labels, teacher_logits)
        return b.z_s, self.terms(b)

    def train_step(
        self,
        images: Tensor,
        labels: Tensor,
        teacher_logits: Tensor | None,
        opt: torch.optim.Optimizer,
    ) -> dict[str, Tensor]:
        """One optimizer step; returns the (detached) loss terms. DML overrides it to update
        its peers in turn."""
        with self.stepper.autocast():
            _, terms = self(images, labels, teacher_logits=teacher_logits)
        loss = sum(terms.values())
        self.stepper.update(loss, opt, terms)  # type: ignore[arg-type]
        return {k: v.detach() for k, v in terms.items()}

    # ---- ownership ---------------------------------------------------------------------
    def train(self, mode: bool = True) -> Distiller:
        """Train the student and extras; the teacher always stays in eval (BN/dropout frozen)."""
        super().train(mode)
        if self.teacher_model is not None:
            self.teacher_model.eval()
        return self

    def own_optimized(self) -> list[nn.Module]:
        """Extras the method updates with its own optimizer (a discriminator)."""
        return []

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student and extra modules, never the teacher (nor self-optimized extras)."""
        skip = set()
        for m in [self.teacher_model, *self.own_optimized()]:
            if m is not None:
                skip |= {id(p) for p in m.parameters()}
        yield from (p for p in self.parameters() if id(p) not in skip)

    def student(self) -> nn.Module:
        return self.student_model

    def students(self) -> list[nn.Module]:
        """Every model the method may export (DML: each peer)."""
        return [self.student()]

    def finish(self, val: torch.utils.data.Dataset) -> dict:
        """Called once after training (DML picks its best peer here); returns notes."""
        return {}

    @torch.no_grad()
    def teacher_logits(self, images: Tensor) -> Tensor:
        assert self.teacher_model is not None
        with self.stepper.teacher_autocast():
            return self.teacher_model(images).float()


def match_spatial(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two feature maps to the smaller's H x W."""
    hs, ht = f_s.shape[2:], f_t.shape[2:]
    if hs == ht:
        return f_s, f_t
    if hs[0] * hs[1] > ht[0] * ht[1]:
        return F.adaptive_avg_pool2d(f_s, (ht[0], ht[1])), f_t
    return f_s, F.adaptive_avg_pool2d(f_t, (hs[0], hs[1]))


def conv_connector(c_in: int, c_out: int, relu: bool = False) -> nn.Sequential:
    """1x1 conv + BN (+ReLU) from the student's channels to the teacher's."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)
