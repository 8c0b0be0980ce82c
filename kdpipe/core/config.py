"""Every option of a run as pydantic models; config files (YAML/TOML) plus CLI overrides.

Defaults here are what `kdpipe run --teacher resnet50 --student resnet18` uses: each one was
chosen so the whole pipeline finishes in minutes on a 2-core CPU (see docs/benchmarks.md).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from kdpipe.core.errors import ConfigError, did_you_mean
from kdpipe.core.structured import read_settings

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")  # the default; fp16 on request
# Random training augmentation (data/augment.py); "none" first
Augment = Literal["none", "crop", "flip", "crop-flip", "resized-crop", "resized-crop-flip"]
Backend = Literal["onnx", "tensorrt"]
BACKENDS: tuple[Backend, ...] = ("onnx",)  # TensorRT on request, where a GPU exists


# A model is a torchvision builder name ("resnet18") or a user's own file and class or
# function in it ("models/tiny.py:TinyNet"); models/custom.py builds the second kind.
_FILE_MODEL = re.compile(r"(?P<path>.+\.py):(?P<attr>[A-Za-z_]\w*)")


def file_model(arch: str) -> tuple[Path, str] | None:
    """(file, attribute) of a `path/to/file.py:Name` model, None for a torchvision name."""
    m = _FILE_MODEL.fullmatch(arch)
    return (Path(m["path"]), m["attr"]) if m else None


def model_label(arch: str) -> str:
    """A model's name in directory and run names: the attribute of a file model."""
    found = file_model(arch)
    return found[1] if found else arch


def _model_file_exists(arch: str) -> str:
    found = file_model(arch)
    if found and not found[0].is_file():
        raise ValueError(f"model file {found[0]} does not exist")
    return arch


ModelName = Annotated[str, AfterValidator(_model_file_exists)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainConfig(_Section):
    """An optimizer recipe: AdamW (or SGD) with a one-cycle schedule."""

    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(0.05, ge=0, le=1)


class DataConfig(_Section):
    spec: str = "digits"
    image_size: int | None = Field(None, ge=8, le=1024)
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    # DataLoader worker processes; None: automatic (none on the CPU or for images already in
    # memory; on a GPU, for images decoded per sample, the cores this process may use less one,
    # at most 8: stepper.loader_workers)
    workers: int | None = Field(None, ge=0, le=64)
    # Fail on an image file that cannot be decoded instead of skipping it with a warning.
    strict: bool = False
    # Random training augmentation (data/augment.py): a shifted crop in a padded border
    # (CIFAR's recipe) or a crop of random area and aspect resized back (ImageNet's), and/or a
    # horizontal flip. Not for digits' flips: a mirrored 2 is no 2.
    augment: Augment = "none"
    # resized-crop's smallest crop, as a fraction of the image's area (torchvision's 0.08)
    crop_scale: float = Field(0.08, gt=0, le=1)
    # Image files: None squashes each whole image to image_size x image_size; a fraction f
    # resizes the shorter side to image_size / f and cuts the central square (0.875: how
    # ImageNet is evaluated, 256 -> 224), for every image not under a random resized crop.
    center_crop: float | None = Field(None, gt=0, le=1)

    def content(self) -> dict[str, Any]:
        """The fields that decide which images, at which size, in which split: what stage
        fingerprints hold. How they are loaded (`workers`: no random augmentation, and the
        order is the sampler's) and whether a bad file fails the run (`strict`: checked each
        time data loads, reused stages or not) change no result, so they enter at their
        defaults: another --workers reuses the trained teacher instead of training it again.
        `augment` does change results, but enters only when on (and `crop_scale` only with a
        resized crop, `center_crop` only when set), so that runs made before they existed
        keep their fingerprints (and their cached teachers)."""
        content = self.model_dump() | {"workers": 0, "strict": False}
        if self.augment == "none":
            del content["augment"]
        if not self.augment.startswith("resized"):
            del content["crop_scale"]
        if self.center_crop is None:
            del content["center_crop"]
        return content


class TeacherConfig(_Section):
    arch: ModelName = "resnet50"
    weights: Path | None = None
    # Train the teacher from `weights` (its recipe below) instead of using them as given; the
    # classifier starts fresh when they score other classes. torchvision's ImageNet weights
    # on other classes are fine-tuned without it (they cannot be used as given).
    fine_tune: bool = False
    # The learning rate of that training (train.lr is the from-scratch recipe's): in
    # bench/pretrained_transfer.py 1e-3 took a teacher fine-tuned for 4 / 8 epochs to 80 / 96 %
    # where 3e-3 reached 39 / 81 % (16 epochs: 98 vs 99 %).
    fine_tune_lr: float = Field(1e-3, gt=0, le=10)
    # From-scratch recipe measured on digits (docs/benchmarks.md): zero-init residuals, AdamW at
    # 3e-3 and label smoothing 0.1 take resnet50 to ~98.6 % test top-1 in 8 epochs (2 seeds).
    train: TrainConfig = TrainConfig(epochs=8, lr=3e-3)
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class StudentConfig(_Section):
    arch: ModelName = "resnet18"
    weights: Path | None = None


class DistillConfig(_Section):
    method: str = "kd"
    # Hyperparameters of the method (`kdpipe methods` lists them); METHOD.NAME in a composition.
    params: dict[str, float] = Field(default_factory=dict)
    # Composition: method -> weight; when given, the loss is the weighted sum of these methods'
    # own terms and `method` is ignored.
    terms: dict[str, float] = Field(default_factory=dict)
    train: TrainConfig = TrainConfig(epochs=8)
    cache_teacher: bool = True
    # Stage layers to tap instead of the detected ones (same count for teacher and student).
    teacher_layers: list[str] | None = None
    student_layers: list[str] | None = None
    assistants: list[ModelName] = Field(default_factory=list)  # TAKD chain, in order
    peers: list[ModelName] = Field(default_factory=list)  # DML peers besides the student
    # Extra teacher-labelled training images: "mix" (mixup/cutmix of the training images)
    # or imagefolder:PATH (unlabeled images; subfolders are ignored).
    transfer: str | None = None
    transfer_size: int = Field(2, ge=1, le=100)  # "mix": this many mixed images per image
    # Fraction of the training labels the student may see; the rest are unlabeled (-1) and
    # learn from the teacher only. The teacher always trains on every label.
    label_fraction: float = Field(1.0, gt=0, le=1)

    @field_validator("terms")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        if not all(0 <= w < float("inf") for w in v.values()):  # NaN fails too
            raise ValueError("term weights must be finite and >= 0")
        return v

    def method_label(self) -> str:
        return "+".join(f"{m}:{w:g}" for m, w in self.terms.items()) or self.method


class ExportConfig(_Section):
    precisions: list[Precision] = Field(default_factory=lambda: list(PRECISIONS))
    backends: list[Backend] = Field(default_factory=lambda: list(BACKENDS))
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    calibration_samples: int = Field(256, ge=1, le=100_000)
    # Largest allowed INT8 top-1 drop against FP32, in percentage points (guard.py).
    max_accuracy_drop: float = Field(1.0, ge=0, le=100)
    # The teacher as ONNX FP32 too, so the profile times both models on onnxruntime: the
    # speedup then compares like with like instead of torch eager against onnxruntime.
    teacher: bool = True
    # INT8 weights in 7 bits for onnxruntime (quantize.py); None = where this CPU is x86
    # without VNNI. Set it when the file will run on another kind of CPU than the exporting one.
    int8_reduce_range: bool | None = None
    batch_range: list[int] = Field(default_factory=lambda: [1, 8, 32])
    parity_samples: int = Field(512, ge=1, le=1_000_000)
    opset: int | None = Field(None, ge=13, le=30)

    @field_validator("batch_range")
    @classmethod
    def _min_opt_max(cls, v: list[int]) -> list[int]:
        if not 1 <= len(v) <= 3 or any(b < 1 for b in v) or v != sorted(v):
            raise ValueError("batch range is MIN[,OPT[,MAX]] with 1 <= MIN <= OPT <= MAX")
        return v

    @field_validator("precisions")
    @classmethod
    def _fp32_first(cls, v: list[str]) -> list[str]:
        # FP32 is the reference every other precision is verified against.
        return ["fp32"] + [p for p in dict.fromkeys(v) if p != "fp32"]


class ProfileConfig(_Section):
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 32])
    threads: int | None = Field(None, ge=1, le=1024)
    # Bounded: an infinite time or count would keep the profile stage timing forever.
    warmup: int = Field(10, ge=0, le=1_000_000)
    warmup_seconds: float = Field(0.5, ge=0, le=3600)
    min_iters: int = Field(200, ge=1, le=10_000_000)
    min_seconds: float = Field(2.0, ge=0, le=3600)
    # Peak memory of each backend, measured in a fresh subprocess (a few seconds each).
    memory: bool = True
    # The batch size the bundle's default form is chosen for; always among those profiled.
    ship_batch: int = Field(1, ge=1, le=65536)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("batch sizes must be positive integers")
        return sorted(set(v))

    def run_batch_sizes(self) -> list[int]:
        """What a run's profile times: the batch sizes asked and the one to ship at."""
        return sorted({*self.batch_sizes, self.ship_batch})


class RuntimeConfig(_Section):
    """How training runs. What of it changes what training computes (AMP's dtype, --compile,
    the teacher's precision, --sync-bn) enters the training stages' fingerprints through
    `stepper.training_numerics`; the rest (device, checkpoints, anomaly mode) does not."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CUDA: autocast in bf16 where supported, else fp16 with a grad scaler (None: on for CUDA).
    amp: bool | None = None
    compile: bool = False  # torch.compile the student (CUDA, logits-only methods)
    # The teacher's inference (its logit table and any per-step forward without gradients):
    # auto = half precision on CUDA, bf16 on a CPU with native bf16 (AVX512-BF16/AMX), else fp32.
    teacher_precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    checkpoint_every: int = Field(0, ge=0)  # also checkpoint every N steps (0: epoch ends)
    detect_anomaly: bool = False
    # Under torchrun, BatchNorm normalizes over the global batch (distill/sync_bn.py), not
    # each process's share: N processes then train what one process would.
    sync_bn: bool = False


class RunConfig(_Section):
    name: str | None = None
    out: Path | None = None
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what NumPy and scikit-learn take
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()
    profile: ProfileConfig = ProfileConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("out", "name")
    @classmethod
    def _utf8(cls, value: Path | str | None) -> Path | str | None:
        # A name that is not UTF-8 (bytes from a Latin-1 shell) passes the file system but not
        # onnx and onnxruntime, whose C++ takes UTF-8 paths: the run failed at export.
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid UTF-8; onnx cannot write files under it") from None
        return value

    def run_name(self) -> str:
        data = self.data.spec.split(":", 1)[0]
        t, s = model_label(self.teacher.arch), model_label(self.student.arch)
        return self.name or f"{t}-to-{s}-{data}"

    def out_dir(self) -> Path:
        return self.out or Path("runs") / self.run_name()


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a plain dict."""
    data = read_settings(path, "config file", "YAML or TOML")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping", "write `key: value` lines")
    return data


def set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set tree['a']['b'] = value for dotted 'a.b', creating sections on the way."""
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _merged(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` over `defaults`, section by section (a value that is no section replaces)."""
    out = dict(defaults)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def build_config(
    base: dict[str, Any], overrides: dict[str, Any], command: str = "run"
) -> RunConfig:
    """Merge CLI overrides (dotted keys, None = not given) into a file's dict and validate;
    `command` is the kdpipe command whose --help a bad value's hint points to."""
    # Start from the defaults, so that a section given in part keeps its other defaults:
    # `--teacher-epochs 3` alone would otherwise rebuild teacher.train from TrainConfig's
    # class defaults and drop the teacher recipe's lr 3e-3 (and `--lr` the distill epochs).
    tree = _merged(RunConfig().model_dump(mode="json"), base)
    for dotted, value in overrides.items():
        if value is not None:
            set_path(tree, dotted, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise _config_error(e, command) from None


def _sections_with(key: str, model: type[BaseModel], prefix: str = "") -> list[str]:
    """Where `key` is a valid key deeper in the config (`epochs` -> distill.train.epochs and
    teacher.train.epochs): a key written at the wrong level is the commonest config slip."""
    found = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            found += [f"{prefix}{name}.{key}"] if key in ann.model_fields else []
            found += _sections_with(key, ann, f"{prefix}{name}.")
    return found


def _config_error(e: ValidationError, command: str) -> ConfigError:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        parent: type[BaseModel] = RunConfig
        for part in err["loc"][:-1]:
            field = parent.model_fields.get(str(part))
            ann = field.annotation if field else None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                parent = ann
        key = str(err["loc"][-1])
        here = "".join(f"{part}." for part in err["loc"][:-1])
        # A valid key written above its section (`epochs:` at the top, `distill: {lr: ...}`)
        # is named with the sections below that take it; else the nearest keys here.
        elsewhere = _sections_with(key, parent, here)
        hint = (
            f"'{key}' belongs in a section: {', '.join(elsewhere)}"
            if elsewhere
            else did_you_mean(key, parent.model_fields)
            or f"valid keys here: {', '.join(parent.model_fields)}"
        )
        return ConfigError(f"unknown config key '{where}'", hint)
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix for our own checks
    return ConfigError(
        f"invalid value for {where}: {msg} (got {value!r})",
        f"see `kdpipe {command} --help` for the allowed values",
    )
