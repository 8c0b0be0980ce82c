"""Weights trained for other classes: torchvision's ImageNet weights from its local cache
(`torchvision[:TAG]`) or any file, loaded into all but a fresh classifier."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from kdpipe.core.errors import ModelError
from kdpipe.models import create, create_pretrained, weights_file


def cache_imagenet_weights(home: Path, arch: str, seed: int = 0) -> tuple[Path, dict]:
    """What torchvision's download of `arch`'s DEFAULT weights leaves in its cache: a
    1000-class state_dict under the URL's file name (random values: nothing is downloaded)."""
    torch.manual_seed(seed)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path, state


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def _same(model: torch.nn.Module, state: dict, skip: str = "") -> None:
    own = model.state_dict()
    compared = [k for k in state if not (skip and k.startswith(skip))]
    assert compared and all(torch.equal(own[k], state[k]) for k in compared)


def test_torchvision_weights_come_from_the_local_cache(torch_home: Path) -> None:
    path, state = cache_imagenet_weights(torch_home, "resnet18")
    assert weights_file("resnet18", "torchvision") == path
    assert weights_file("resnet18", "torchvision:IMAGENET1K_V1") == path
    assert weights_file("resnet18", Path("my.pt")) == Path("my.pt")
    _same(create("resnet18", 1000, "torchvision"), state)
    model, fresh = create_pretrained("resnet18", 1000, "torchvision")
    assert not fresh
    _same(model, state)
    # On 10 classes: everything but the classifier from the file, the classifier new.
    model, fresh = create_pretrained("resnet18", 10, "torchvision")
    assert fresh and tuple(model.fc.weight.shape) == (10, 512)
    _same(model, state, skip="fc.")
    assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_weights_not_in_the_cache_or_a_tag_torchvision_lacks_are_one_line(
    torch_home: Path,
) -> None:
    with pytest.raises(ModelError) as e:
        weights_file("resnet50", "torchvision")
    expected = torch_home / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth"  # IMAGENET1K_V2
    assert "IMAGENET1K_V2 weights for resnet50 are not in the local cache" in e.value.message
    assert str(expected) in e.value.message
    assert "never downloads: copy resnet50-11ad3fa6.pth there" in e.value.hint
    # Another of its weights in the cache is named (torchvision's DEFAULT moved to V2 for it).
    v1 = torch_home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    v1.parent.mkdir(parents=True)
    v1.write_bytes(b"")
    with pytest.raises(ModelError) as e:
        weights_file("resnet50", "torchvision")
    assert e.value.hint.startswith("torchvision:IMAGENET1K_V1 is there; or kdpipe never downloads")
    with pytest.raises(ModelError) as e:
        weights_file("resnet18", "torchvision:IMAGENET1K_V9")
    assert "torchvision has no IMAGENET1K_V9 weights for resnet18" in e.value.message
    assert "torchvision:IMAGENET1K_V1" in e.value.hint


def test_a_file_for_other_classes_starts_all_but_the_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    seven = create("resnet18", 7)
    path = tmp_path / "seven.pt"
    torch.save(seven.state_dict(), path)
    model, fresh = create_pretrained("resnet18", 3, path)
    assert fresh and model.fc.out_features == 3
    _same(model, seven.state_dict(), skip="fc.")
    model, fresh = create_pretrained("resnet18", 7, path)
    assert not fresh
    _same(model, seven.state_dict())
    # Exact loading stays exact: another head is refused where no fresh one was asked for.
    with pytest.raises(ModelError, match="do not fit"):
        create("resnet18", 3, path)
    # And weights of another architecture are refused, not half-loaded.
    other = tmp_path / "resnet34.pt"
    torch.save(create("resnet34", 7).state_dict(), other)
    with pytest.raises(ModelError, match="unexpected"):
        create_pretrained("resnet18", 3, other)


def test_the_evaluation_crop_torchvision_publishes_maps_to_center_crop() -> None:
    from kdpipe.data.transforms import crop_fraction, shorter_side
    from kdpipe.models import torchvision_crop

    assert torchvision_crop("resnet50", "torchvision") == (232, 224)  # IMAGENET1K_V2
    assert torchvision_crop("resnet50", "torchvision:IMAGENET1K_V1") == (256, 224)
    assert torchvision_crop("resnet18", Path("weights.pt")) is None
    # The note's --center-crop resizes to the shorter side torchvision uses.
    assert crop_fraction(224, 256) == "0.875" and crop_fraction(224, 232) == "0.9655"
    for resize, crop in ((232, 224), (256, 224), (342, 299), (235, 224), (36, 32)):
        assert shorter_side(crop, float(crop_fraction(crop, resize))) == resize


@pytest.mark.parametrize(("arch", "aux"), [("googlenet", "aux1."), ("inception_v3", "AuxLogits.")])
def test_imagenet_files_with_auxiliary_classifiers_load(
    arch: str, aux: str, torch_home: Path
) -> None:
    """torchvision's GoogLeNet and Inception files hold their training-time side classifiers;
    kdpipe builds both without them, so those tensors are left out, not refused."""
    torch.manual_seed(0)
    full = torchvision.models.get_model(arch, weights=None, aux_logits=True, init_weights=True)
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(full.state_dict(), path)
    assert any(k.startswith(aux) for k in full.state_dict())
    model, fresh = create_pretrained(arch, 10, "torchvision")
    assert fresh and model.fc.out_features == 10
    kept = {k: v for k, v in full.state_dict().items() if not k.startswith(aux.split(".")[0])}
    if arch == "googlenet":
        kept = {k: v for k, v in kept.items() if not k.startswith("aux2.")}
    _same(model, kept, skip="fc.")


def test_runs_on_image_files_are_told_the_crop_torchvisions_weights_saw(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kdpipe.api.pipeline import note_pretrained_evaluation
    from kdpipe.core import ui
    from kdpipe.core.config import RunConfig

    monkeypatch.setattr(ui, "_quiet", False)

    def note(**fields: object) -> str:
        capsys.readouterr()
        note_pretrained_evaluation(RunConfig.model_validate(fields))
        return " ".join(capsys.readouterr().err.split())

    files = {"spec": "imagefolder:/data/flowers"}
    said = note(data=files, teacher={"weights": "torchvision"})  # resnet50: IMAGENET1K_V2
    assert "evaluated on 224x224 centre crops of images resized to 232" in said
    assert "--center-crop 0.9655 --image-size 224" in said
    assert note(data=files, student={"weights": "torchvision:IMAGENET1K_V1"}).count("256") == 1
    assert note(data={**files, "center_crop": 0.9655}, teacher={"weights": "torchvision"}) == ""
    assert note(data=files, teacher={"weights": "teacher.pt"}) == ""
    assert note(teacher={"weights": "torchvision"}) == ""  # digits: no crop to speak of
    assert "(--center-crop 0.875)" in note(data={"spec": "imagenet:/data/imagenet"})


def test_a_teacher_trained_from_weights_is_keyed_by_its_file_and_fine_tuning_recipe(
    tmp_path: Path,
) -> None:
    from kdpipe.core.config import build_config
    from kdpipe.stages.teacher import teacher_fingerprint

    path = tmp_path / "teacher.pt"
    torch.save(create("resnet18", 10).state_dict(), path)

    def fp(**overrides: object) -> str:
        cfg = build_config(
            {}, {"teacher.arch": "resnet18", "teacher.weights": str(path), **overrides}
        )
        return teacher_fingerprint(cfg, 10)

    given = fp()
    assert fp(**{"teacher.fine_tune_lr": 3e-4}) == given  # used as given: no recipe in it
    tuned = fp(**{"teacher.fine_tune": True})
    assert tuned != given
    assert fp(**{"teacher.fine_tune": True, "teacher.fine_tune_lr": 3e-4}) != tuned
    assert fp(**{"teacher.fine_tune": True, "teacher.train.lr": 1.0}) == tuned  # scratch's lr
    torch.save(create("resnet18", 10).state_dict(), path)  # other weights, same name
    assert fp(**{"teacher.fine_tune": True}) != tuned
