"""The edge bundle: what a device team takes as is.

`export/` holds the ONNX files, `labels.txt` and `bundle.json`: input name/shape/dtype/layout,
the preprocessing (color, resize, centre crop, scale, mean/std), class names, what the output means, each
file's precision and sha256, kdpipe and opset versions, and the run it came from. The same
facts travel inside each ONNX file's metadata_props. `kdpipe predict` reads only this.
"""

from __future__ import annotations

import time
from pathlib import Path

from kdpipe import __version__
from kdpipe.core.runs import file_sha256, write_json, write_text
from kdpipe.data.splits import DataInfo
from kdpipe.data.transforms import shorter_side

# 2: preprocessing.center_crop (a reader of version 1 would squash a centre-cropped model's
# input). `kdpipe predict` reads both and refuses later ones.
BUNDLE_VERSION = "2"


# The bundle's file for each form the profile measures: OpenVINO's bf16 runs the FP32 file.
FILE_OF_FORM = {"fp32": "fp32", "bf16": "fp32", "fp16": "fp16", "int8": "int8"}


def write_bundle(
    export_dir: Path,
    info: DataInfo,
    files: dict[str, dict],
    run_dir: Path,
    shipped: dict | None = None,
) -> dict:
    """Write labels.txt and bundle.json beside the ONNX files; return the bundle description.
    `shipped`: the form measured fastest (report/shipping.py), which `kdpipe predict` runs by
    default; without it, the FP32 file on onnxruntime."""
    labels = export_dir / "labels.txt"
    write_text(labels, "\n".join(info.class_names) + "\n")
    c, h, w = info.input_size
    bundle = {
        "format": "kdpipe-bundle",
        "bundle_version": BUNDLE_VERSION,
        "kdpipe_version": __version__,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source_run": str(run_dir.resolve()),
        "input": {
            "name": "input",
            "shape": ["batch", c, h, w],
            "dtype": "float32",
            "layout": info.layout,
        },
        "preprocessing": {
            "color": info.color,
            "resize": [h, w],
            "interpolation": info.resize,
            "scale": info.scale,
            "mean": info.mean,
            "std": info.std,
            # None: the whole image resized to H x W; else its shorter side resized to
            # `shorter_side` (aspect kept) and the central H x W cut, as torchvision's
            # CenterCrop rounds the offsets: round((side - H) / 2)
            "center_crop": (
                None
                if info.center_crop is None
                else {
                    "fraction": info.center_crop,
                    "shorter_side": shorter_side(h, info.center_crop),
                }
            ),
            "description": info.preprocessing,
        },
        "output": {
            "name": "logits",
            "shape": ["batch", info.num_classes],
            "meaning": "unnormalized class scores; argmax is the class, softmax gives probabilities",
        },
        "class_names": info.class_names,
        "labels": {"file": labels.name, "sha256": file_sha256(labels)},
        "models": {
            precision: {
                "file": r["file"],
                "precision": precision,
                "sha256": file_sha256(export_dir / r["file"]),
                "size_bytes": (export_dir / r["file"]).stat().st_size,
                "opset": r.get("opset"),
            }
            for precision, r in files.items()
        },
    }
    if shipped is not None:
        bundle["shipped"] = {"model": FILE_OF_FORM[shipped["precision"]], **shipped}
    write_json(export_dir / "bundle.json", bundle)
    return bundle
