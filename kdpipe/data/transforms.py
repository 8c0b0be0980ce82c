"""Preprocessing for image files: resize (the whole image squashed to size x size, or with
--center-crop its shorter side resized and the centre cut out, as ImageNet is evaluated),
tensor, normalize. Deterministic, but for a training image the trainer loads under --augment
resized-crop: that one is cut at random first (ResizeOrCrop)."""

from __future__ import annotations

import math

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from kdpipe.data.augment import current_draw

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def eval_transform(
    size: int,
    mean: list[float],
    std: list[float],
    grayscale: bool = False,
    center_crop: float | None = None,
) -> T.Compose:
    steps: list = [T.Grayscale(num_output_channels=3)] if grayscale else [T.Lambda(_rgb)]
    steps += [ResizeOrCrop(size, center_crop), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def shorter_side(size: int, center_crop: float) -> int:
    """The shorter side an image is resized to before its central size x size is cut: timm's
    floor(size / crop_pct), so 0.875 gives torchvision's 256 -> 224 (the epsilon keeps a
    quotient that is whole, as 224 / 0.875, from flooring one below)."""
    return max(size, math.floor(size / center_crop + 1e-9))


def crop_fraction(size: int, side: int) -> str:
    """The shortest decimal F with shorter_side(size, F) == side: what to pass as
    --center-crop to resize to `side` before cutting size x size (224, 232 -> 0.9655)."""
    for digits in range(3, 12):
        text = f"{size / side:.{digits}f}".rstrip("0")
        if shorter_side(size, float(text)) == side:
            return text
    return repr(size / side)


class ResizeOrCrop:
    """Resize to size x size (bilinear, antialiased: T.Resize's defaults); with `center_crop`
    (a fraction), resize the shorter side to size / fraction keeping the aspect, then cut the
    central size x size (T.Resize(int) + T.CenterCrop: ImageNet's evaluation). A training image
    loaded within augment.cropping is cut at random instead and its crop resized to size x
    size: cut from the image at its own resolution, as torchvision's RandomResizedCrop cuts it."""

    def __init__(self, size: int, center_crop: float | None = None) -> None:
        self.size = [size, size]
        self.center_crop = center_crop

    def __call__(self, img: Image.Image) -> Image.Image:
        draw = current_draw()
        if draw is not None:
            left, top, w, h = draw.box((img.height, img.width))
            draw.cropped = True
            return TF.resized_crop(img, top, left, h, w, self.size, antialias=True)
        if self.center_crop is None:
            return TF.resize(img, self.size, antialias=True)
        side = shorter_side(self.size[0], self.center_crop)
        return TF.center_crop(TF.resize(img, side, antialias=True), self.size)

    def __repr__(self) -> str:
        # Unchanged without a centre crop: the repr is in cached tables' keys (data.identity).
        crop = "" if self.center_crop is None else f", center_crop={self.center_crop}"
        return f"ResizeOrCrop(size={self.size}{crop})"


def _rgb(img):  # palette, RGBA and grayscale files all become 3-channel RGB
    return img.convert("RGB")


def describe(
    size: int, mean: list[float], std: list[float], center_crop: float | None = None
) -> str:
    resize = f"resize {size}x{size}"
    if center_crop is not None:
        side = shorter_side(size, center_crop)
        resize = f"resize shorter side {side} -> centre crop {size}x{size}"
    return f"RGB -> {resize} -> [0,1] -> (x-mean)/std, mean={mean}, std={std}"
