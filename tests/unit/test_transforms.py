"""--center-crop: image files resized by their shorter side and cut in the centre, as ImageNet is
evaluated — the same pixels in training, in evaluation and in `kdpipe predict` on the device."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from kdpipe.core.config import DataConfig
from kdpipe.core.errors import DataError
from kdpipe.data import load_data
from kdpipe.data.identity import image_identity
from kdpipe.data.transforms import ResizeOrCrop, shorter_side
from kdpipe.export.bundle import write_bundle
from kdpipe.predict import preprocess


def _photo(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_shorter_side_is_timms_floor_of_size_over_fraction() -> None:
    assert shorter_side(224, 0.875) == 256  # torchvision's 256 -> 224
    assert shorter_side(224, 0.95) == 235
    assert shorter_side(32, 0.875) == 36
    assert shorter_side(24, 1.0) == 24


@pytest.mark.parametrize("shape", [(200, 300), (317, 150), (64, 64), (37, 61)])
def test_the_crop_is_torchvisions_resize_then_center_crop(shape: tuple[int, int]) -> None:
    img = _photo(*shape)
    ours = np.asarray(ResizeOrCrop(224, 0.875)(img))
    reference = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(img))
    assert ours.shape == (224, 224, 3) and np.array_equal(ours, reference)
    # Without a crop, the whole image squashed, as before.
    assert np.array_equal(np.asarray(ResizeOrCrop(224)(img)), np.asarray(T.Resize((224, 224))(img)))


def _bordered(root: Path) -> None:
    """Two classes of 40 x 20 images: a black (class a) or grey (class b) centre 20 wide
    between white bands 10 wide — what a centre crop at 1.0 cuts off and a squash keeps."""
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i in range(10):
            pixels = np.full((20, 40, 3), 255, np.uint8)
            pixels[:, 10:30] = 100 * k + i
            Image.fromarray(pixels).save(root / c / f"{i}.png")


def test_an_image_folder_loads_centre_crops_and_keys_its_cache_by_them(tmp_path: Path) -> None:
    _bordered(tmp_path / "imgs")
    spec = f"imagefolder:{tmp_path / 'imgs'}"
    squashed = load_data(DataConfig(spec=spec, image_size=20), seed=0)
    cropped = load_data(DataConfig(spec=spec, image_size=20, center_crop=1.0), seed=0)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (cropped.info.mean, cropped.info.std))
    for split in ("train", "val", "test"):
        x, _ = getattr(cropped, split)[0]
        raw = x * std + mean  # back to [0, 1]: the centre only, no white band left
        assert x.shape == (3, 20, 20) and float(raw.max()) < 0.5
        assert float((getattr(squashed, split)[0][0] * std + mean).max()) > 0.99
    assert cropped.info.center_crop == 1.0 and squashed.info.center_crop is None
    assert "resize shorter side 20 -> centre crop 20x20" in cropped.info.preprocessing
    # The teacher-logit table of one is never served for the other.
    assert image_identity(cropped.train) != image_identity(squashed.train)
    assert image_identity(squashed.train) == image_identity(
        load_data(DataConfig(spec=spec, image_size=20), seed=0).train
    )


def test_predict_feeds_the_model_the_pixels_it_was_evaluated_on(tmp_path: Path) -> None:
    """The bundle's centre crop, done by `kdpipe predict` with numpy and PIL alone, gives the
    tensors the run's test split held, for wide, tall, square, odd and grey images."""
    root = tmp_path / "imgs"
    for k, c in enumerate(("a", "b")):
        (root / c).mkdir(parents=True)
        for i, (h, w) in enumerate([(40, 57), (61, 33), (48, 48), (29, 31), (70, 45)] * 2):
            img = _photo(h, w, seed=10 * k + i)
            (img.convert("L") if i == 3 else img).save(root / c / f"{i}.png")
    data = load_data(DataConfig(spec=f"imagefolder:{root}", image_size=24, center_crop=0.875), 0)
    export = tmp_path / "export"
    export.mkdir()
    bundle = write_bundle(export, data.info, {}, tmp_path)
    pre = json.loads((export / "bundle.json").read_text())["preprocessing"]
    assert bundle["bundle_version"] == "2"
    assert pre["center_crop"] == {"fraction": 0.875, "shorter_side": 27}
    assert pre["resize"] == [24, 24] and pre["interpolation"] == "pil_bilinear"
    test = data.test
    for j in range(len(test)):  # type: ignore[arg-type]
        path, _ = test.dataset.samples[test.indices[j]]  # type: ignore[attr-defined]
        expected = test[j][0].numpy()
        got = preprocess(Path(path), pre)
        assert got.shape == expected.shape == (3, 24, 24)
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_digits_refuse_a_centre_crop() -> None:
    with pytest.raises(DataError, match="applies to image files"):
        load_data(DataConfig(center_crop=0.875), seed=0)


def test_the_crop_enters_fingerprints_only_when_set() -> None:
    assert "center_crop" not in DataConfig().content()  # runs made before it keep theirs
    assert DataConfig(center_crop=0.875).content()["center_crop"] == 0.875
