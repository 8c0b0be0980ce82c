"""`kdpipe predict BUNDLE IMAGE...`: classify image files with an exported bundle.

Uses only onnxruntime or OpenVINO, numpy and Pillow — never torch — so it runs where the
bundle ships. By default the form the run measured fastest (bundle.json's `shipped`: its file
on its runtime), else the FP32 file on onnxruntime. Checksums are verified before loading.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import onnxruntime as ort
from PIL import Image
from pydantic import Field, ValidationError

from kdpipe.core.errors import ConfigError, DataError, ExportError, first_line
from kdpipe.core.pixels import EXTENSIONS, READ_ERRORS, eight_bit, is_image_file, open_image
from kdpipe.core.runs import file_sha256  # stdlib only: keeps predict free of torch
from kdpipe.core.structured import Open, first_problem, parse, read_text


@dataclass
class Prediction:
    path: str
    label: str
    index: int
    probability: float


def load_bundle(path: Path) -> tuple[Path, dict]:
    """The bundle folder and its bundle.json; `path` may name either."""
    folder = path.parent if path.name == "bundle.json" else path
    meta = folder / "bundle.json"
    if not meta.is_file():
        raise ConfigError(f"{path} is not a kdpipe bundle (no bundle.json)", "pass RUN_DIR/export")
    try:
        bundle = parse(read_text(meta), "json")
        version = bundle.get("bundle_version", "1") if isinstance(bundle, dict) else "1"
        if version not in READABLE_VERSIONS:
            raise ConfigError(
                f"{meta} is bundle_version {version!r}; this kdpipe reads "
                f"{', '.join(READABLE_VERSIONS)}",
                "upgrade kdpipe to the version that exported the bundle",
            )
        _Bundle.model_validate(bundle)
    except OSError as e:
        raise ConfigError(f"cannot read {meta}: {e.strerror}", "check the path") from None
    except ValidationError as e:
        raise ConfigError(
            f"{meta} is corrupt ({first_problem(e)})", "re-run kdpipe export"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{meta} is corrupt ({e})", "re-run kdpipe export") from None
    return folder, bundle


# bundle.json formats this kdpipe reads (export.bundle.BUNDLE_VERSION; 2 added center_crop).
READABLE_VERSIONS = ("1", "2")

# What predict reads of bundle.json, checked before use: a bundle is shipped, copied and edited
# by hand, and a zero std gave NaN scores, a huge resize a MemoryError, a string mean or a
# short class list an internal error.
Finite = Annotated[float, Field(allow_inf_nan=False)]
Side = Annotated[int, Field(ge=1, le=1024)]  # kdpipe trains at --image-size 1024 at most


class _CenterCrop(Open):
    fraction: Annotated[float, Field(gt=0, le=1)]
    shorter_side: Side


class _Preprocessing(Open):
    color: Literal["rgb", "gray"]
    resize: tuple[Side, Side]
    center_crop: _CenterCrop | None = None  # bundle_version 1 has none
    interpolation: Literal["pil_bilinear", "bilinear"]
    scale: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    mean: Annotated[list[Finite], Field(min_length=3, max_length=3)]
    std: Annotated[
        list[Annotated[float, Field(gt=0, allow_inf_nan=False)]], Field(min_length=3, max_length=3)
    ]


class _ModelFile(Open):
    file: Annotated[str, Field(pattern=r"^[^/\\]+$")]  # a file beside bundle.json, no path
    sha256: str


class _Input(Open):
    name: str


class _Bundle(Open):
    input: _Input
    preprocessing: _Preprocessing
    class_names: Annotated[list[str], Field(min_length=2)]
    models: dict[str, _ModelFile]


RUNTIMES = ("onnxruntime", "openvino")
Model = Callable[[np.ndarray], np.ndarray]  # images in, logits out


def default_form(bundle: dict) -> tuple[str, str]:
    """(file precision, runtime) the bundle ships: its measured choice, else FP32 on onnxruntime."""
    shipped = bundle.get("shipped") or {}
    return shipped.get("model", "fp32"), shipped.get("runtime", "onnxruntime")


def open_model(folder: Path, bundle: dict, precision: str, runtime: str = "onnxruntime") -> Model:
    """The bundle's `precision` file, checked against its sha256, loaded on `runtime`."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime '{runtime}'", f"choose {' or '.join(RUNTIMES)}")
    models = bundle["models"]
    if precision not in models:
        raise ConfigError(
            f"bundle has no {precision} model", f"available: {', '.join(models) or 'none'}"
        )
    entry = models[precision]
    path = folder / entry["file"]
    if not path.is_file():
        raise ExportError(f"bundle file {path} is missing", "copy the whole export folder")
    if file_sha256(path) != entry["sha256"]:
        raise ExportError(
            f"{path} does not match its sha256 in bundle.json (corrupt or modified)",
            "copy the file again from the run's export folder",
        )
    try:
        return _openvino(path) if runtime == "openvino" else _onnxruntime(path, bundle)
    except ConfigError:
        raise
    except Exception as e:  # both runtimes raise their own exception types
        raise ExportError(
            f"{runtime} cannot load {path}: {first_line(e)}", "re-export the model"
        ) from None


def _onnxruntime(path: Path, bundle: dict) -> Model:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = bundle["input"]["name"]
    return lambda x: session.run(None, {name: x})[0]


def _openvino(path: Path) -> Model:
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError(
            "this bundle ships for OpenVINO, which is not installed",
            "pip install openvino, or pass --runtime onnxruntime",
        ) from None
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    return lambda x: compiled(x)[0]


def resize_bilinear(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """[C,H0,W0] -> [C,h,w] exactly as torch's interpolate(mode='bilinear', align_corners=False)."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(img.shape[1], h)
    x0, x1, wx = axis(img.shape[2], w)
    rows = img[:, y0, :] * (1 - wy)[None, :, None] + img[:, y1, :] * wy[None, :, None]
    return rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx


def resized_size(height: int, width: int, pre: dict) -> tuple[int, int]:
    """The (h, w) an image of this size is resized to: the model's input size, or with a
    centre crop the shorter side's target and the aspect kept (torchvision's Resize(int))."""
    crop = pre.get("center_crop")
    if not crop:
        h, w = pre["resize"]
        return h, w
    side = crop["shorter_side"]
    if width <= height:
        return int(side * height / width), side
    return side, int(side * width / height)


def preprocess(path: Path, pre: dict) -> np.ndarray:
    """One image file -> the [3,H,W] float32 input the model was trained on."""
    h, w = pre["resize"]
    try:
        with open_image(path) as raw:  # 16-bit scaled as in training (kdpipe.core.pixels)
            img = eight_bit(raw, "L" if pre["color"] == "gray" else "RGB")
        rh, rw = resized_size(img.height, img.width, pre)
        if pre["interpolation"] == "pil_bilinear":  # as torchvision's Resize on PIL images
            img = img.resize((rw, rh), Image.Resampling.BILINEAR)
        x = np.asarray(img, dtype=np.float32)
        x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
        if pre["interpolation"] == "bilinear":  # as torch's interpolate on tensors
            x = resize_bilinear(x, rh, rw)
    except READ_ERRORS as e:
        raise DataError(f"cannot read image {path}: {e}", "pass PNG/JPEG/... image files") from None
    # torchvision's CenterCrop offsets (a no-op without a crop: the image is already h x w)
    top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
    x = x[:, top : top + h, left : left + w] * np.float32(pre["scale"])
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    mean = np.asarray(pre["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(pre["std"], dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


def image_files(paths: list[Path]) -> list[Path]:
    """The files named, with each folder replaced by the image files under it (sorted)."""
    out: list[Path] = []
    for p in paths:
        if not p.is_dir():
            out.append(p)
            continue
        found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f.name))
        if not found:
            raise DataError(
                f"no image files in {p}", f"image files end with {', '.join(EXTENSIONS)}"
            )
        out += found
    return out


def predict(
    bundle_path: Path,
    images: list[Path],
    precision: str | None = None,
    batch: int = 64,
    runtime: str | None = None,
) -> list[Prediction]:
    """Classify `images`; `precision` and `runtime` default to the bundle's shipped form."""
    folder, bundle = load_bundle(bundle_path)
    images = image_files(images)
    shipped_file, shipped_runtime = default_form(bundle)
    model = open_model(folder, bundle, precision or shipped_file, runtime or shipped_runtime)
    classes = bundle["class_names"]
    out: list[Prediction] = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = np.stack([preprocess(p, bundle["preprocessing"]) for p in chunk])
        logits = np.asarray(model(x)).astype(np.float64)
        if logits.shape[1] != len(classes):
            raise ConfigError(
                f"bundle.json names {len(classes)} classes but the model gives "
                f"{logits.shape[1]} scores",
                "re-run kdpipe export",
            )
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for p, row in zip(chunk, probs, strict=True):
            k = int(row.argmax())
            out.append(Prediction(str(p), classes[k], k, float(row[k])))
    return out
