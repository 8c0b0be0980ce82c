"""Preprocessing for image files: resize, tensor, normalize. Deterministic, but for a training
image the trainer loads under --augment resized-crop: that one is cut at random first
(ResizeOrCrop)."""

from __future__ import annotations

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from kdpipe.data.augment import current_draw

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def eval_transform(
    size: int, mean: list[float], std: list[float], grayscale: bool = False
) -> T.Compose:
    steps: list = [T.Grayscale(num_output_channels=3)] if grayscale else [T.Lambda(_rgb)]
    steps += [ResizeOrCrop(size), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


class ResizeOrCrop:
    """Resize to size x size (bilinear, antialiased: T.Resize's defaults) — or, for a training
    image loaded within augment.cropping, its random crop resized so: cut from the image at
    its own resolution, as torchvision's RandomResizedCrop cuts it."""

    def __init__(self, size: int) -> None:
        self.size = [size, size]

    def __call__(self, img: Image.Image) -> Image.Image:
        draw = current_draw()
        if draw is None:
            return TF.resize(img, self.size, antialias=True)
        left, top, w, h = draw.box((img.height, img.width))
        draw.cropped = True
        return TF.resized_crop(img, top, left, h, w, self.size, antialias=True)

    def __repr__(self) -> str:
        return f"ResizeOrCrop(size={self.size})"


def _rgb(img):  # palette, RGBA and grayscale files all become 3-channel RGB
    return img.convert("RGB")


def describe(size: int, mean: list[float], std: list[float]) -> str:
    return f"RGB -> resize {size}x{size} -> [0,1] -> (x-mean)/std, mean={mean}, std={std}"
