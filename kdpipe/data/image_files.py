"""Image files on disk: whether a file decodes to its end, and loading any mode as 8-bit RGB
(which names are images: kdpipe.pixels). Shared by `imagefolder:` data and `--transfer
imagefolder:`."""

from __future__ import annotations

import os
import stat

from PIL import Image

from kdpipe.errors import DataError
from kdpipe.pixels import EXTENSIONS, READ_ERRORS, eight_bit, is_image_file, open_image

__all__ = ["EXTENSIONS", "is_image_file", "load_rgb", "unreadable"]

# verify() checks PNG and WebP to their last byte but reads no image data of JPEG, GIF, BMP
# or TIFF: a download cut short passes it and fails minutes later, in training. JPEG and GIF
# end with a fixed marker, so a file that has it is whole; any other file is decoded once.
_VERIFIED_WHOLE = {"PNG", "WEBP"}
_END_MARKERS = {"JPEG": b"\xff\xd9", "GIF": b"\x3b"}


def _ends_with(file: str, marker: bytes) -> bool:
    with open(file, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - 64))
        return f.read().rstrip(b"\x00\r\n ").endswith(marker)


def unreadable(file: str) -> str | None:
    """Why `file` cannot be used as an image (Pillow's words), or None when it decodes whole."""
    try:
        # A named pipe called x.png blocked the run forever in open(); a device never ends.
        if not stat.S_ISREG(os.stat(file).st_mode):
            return "not a regular file (a pipe, socket or device)"
        with open_image(file) as img:
            fmt = img.format or ""
            img.verify()
        if fmt in _VERIFIED_WHOLE or (fmt in _END_MARKERS and _ends_with(file, _END_MARKERS[fmt])):
            return None
        with open_image(file) as img:
            img.load()  # raises "image file is truncated"
    except READ_ERRORS as e:
        return str(e) or type(e).__name__
    return None


def load_rgb(file: str) -> Image.Image:
    """ImageFolder's loader: any image mode as 8-bit RGB (16-bit greyscale scaled, not
    clipped); a file that stops decoding mid-run is named in a one-line DataError."""
    try:
        with open_image(file) as img:
            return eight_bit(img, "RGB")
    except READ_ERRORS as e:
        raise DataError(
            f"cannot decode image {file}: {e}",
            "remove or replace the file (kdpipe checks every image when it loads the folder)",
        ) from None
