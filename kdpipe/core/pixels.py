"""Which files are images, and any image file's pixels as 8 bits per channel, the same way in
training and in `kdpipe predict` (which runs without torch: numpy and Pillow only here).

Pillow's own `convert("RGB")` clips a 16-bit greyscale image at 255 (nearly all white);
here it is scaled to 0..255 first, so a 16-bit scan is seen as its 8-bit copy would be. A
floating-point ("F") image with every value in [0, 1] — the convention of scikit-image and of
torchvision's float tensors, and what scientific TIFFs usually hold — is scaled by 255 (Pillow
read it as 0..1 out of 255: black); one with larger values is read as 0..255, as Pillow does.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")

# torchvision's IMG_EXTENSIONS, plus GIF (Pillow reads it; ImageFolder alone would skip such
# files silently). Spelled out rather than imported: torchvision would pull in torch.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


# What reading an untrusted image file can raise: broken or truncated data (OSError, SyntaxError,
# ValueError from Pillow's decoders), or more than twice Image.MAX_IMAGE_PIXELS (a "decompression
# bomb": a few KB of PNG that decode to gigabytes), which Pillow raises as a bare Exception.
READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@contextlib.contextmanager
def open_image(file: str | Path) -> Iterator[Image.Image]:
    """Image.open without Pillow's DecompressionBombWarning. Between its warning limit (89 M
    pixels) and twice that, a file is a large photo (a 108 MP phone camera's), not an attack;
    it is read, and the warning, which every DataLoader worker printed at every epoch, gave
    the user nothing to do. Above twice the limit Pillow raises (READ_ERRORS)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(file) as img:
            yield img


def is_image_file(file: str) -> bool:
    return file.lower().endswith(EXTENSIONS)


def eight_bit(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """`img` (already opened) in `mode` ("RGB" or "L"), 16-bit greyscale scaled, not clipped."""
    img.load()
    if img.mode in WIDE_MODES:
        wide = np.asarray(img, dtype=np.float64) / 257
        img = Image.fromarray(wide.clip(0, 255).astype(np.uint8))
    elif img.mode == "F":
        real = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=255, neginf=0)
        scale = 255 if real.size and real.max() <= 1 else 1
        img = Image.fromarray((real * scale).clip(0, 255).round().astype(np.uint8))
    return img.convert(mode)
