"""Image files on disk: whether a file decodes to its end, and loading any mode as 8-bit RGB
(which names are images: kdpipe.core.pixels). Shared by `imagefolder:` data and `--transfer
imagefolder:`."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence

import PIL
from PIL import Image

from kdpipe import __version__
from kdpipe.core import cache
from kdpipe.core.errors import DataError
from kdpipe.core.pixels import EXTENSIONS, READ_ERRORS, eight_bit, is_image_file, open_image
from kdpipe.core.runs import read_json, write_json

__all__ = ["EXTENSIONS", "is_image_file", "load_rgb", "unreadable", "unreadable_files"]

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


def unreadable_files(files: Sequence[str]) -> dict[str, str]:
    """{file: why} for the files that cannot be used as images (`unreadable`), in their order.

    The verdicts are kept in $KDPIPE_CACHE/image-checks/ under a key of every file's path,
    size, modification time and inode (and Pillow's version and pixel limit): a rerun — a
    resume after a crash, another student — of an ImageNet-sized folder opened all 1.28 M
    files again (~47 us each warm on the CI CPU, far longer on a network disk, once per
    torchrun rank). Every rank stores its verdicts: the cache may be each machine's own, and
    rank 0 is on one machine only (ranks do not wait for one another to check first: on a
    network disk an ImageNet check can outlast the process group's timeout). Any file
    changed, added or removed is another key: the folder is checked again."""

    key = _listing_key(files)
    path = cache.entry("image-checks", f"{key}.json") if key else None
    if path is not None and path.is_file():
        try:
            known = read_json(path)
        except (OSError, ValueError):  # damaged: checked again below, and stored again
            known = None
        if isinstance(known, dict) and all(isinstance(v, str) for v in known.values()):
            return {f: known[f] for f in files if f in known}
    bad = {f: why for f in files if (why := unreadable(f))}
    if path is not None:
        try:
            write_json(path, bad, every_rank=True)  # the same verdicts: atomic, any may win
        except OSError:  # a cache that cannot be written costs this reuse only (the teacher
            pass  # cache's warning already says so)
    return bad


def _listing_key(files: Sequence[str]) -> str | None:
    """What the verdicts depend on, hashed; None when a file cannot be stat'ed (it is then
    checked, and named, by `unreadable`)."""

    h = hashlib.sha256(f"{__version__}|{PIL.__version__}|{Image.MAX_IMAGE_PIXELS}".encode())
    try:
        for f in files:
            st = os.stat(f)
            h.update(os.fsencode(os.path.abspath(f)))
            h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    except OSError:
        return None
    return h.hexdigest()[:32]


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
