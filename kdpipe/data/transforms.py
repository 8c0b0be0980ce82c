"""Deterministic preprocessing for image files: resize, tensor, normalize (no random augmentation)."""

from __future__ import annotations

from torchvision import transforms as T

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def eval_transform(
    size: int, mean: list[float], std: list[float], grayscale: bool = False
) -> T.Compose:
    steps: list = [T.Grayscale(num_output_channels=3)] if grayscale else [T.Lambda(_rgb)]
    steps += [T.Resize((size, size), antialias=True), T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _rgb(img):  # palette, RGBA and grayscale files all become 3-channel RGB
    return img.convert("RGB")


def describe(size: int, mean: list[float], std: list[float]) -> str:
    return f"RGB -> resize {size}x{size} -> [0,1] -> (x-mean)/std, mean={mean}, std={std}"
