"""A user's own model file, `path/to/file.py:Name`: built, resized, fingerprinted, and every
mistake in it named in one line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from kdpipe import models
from kdpipe.core.config import build_config
from kdpipe.core.errors import ConfigError, ModelError
from kdpipe.models.custom import sources
from kdpipe.stages.distill import distill_fingerprint
from kdpipe.stages.teacher import teacher_fingerprint

NET = """
import torch
from torch import nn

class TinyNet(nn.Module):
    def __init__(self, num_classes=1000, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))

class FixedHead(nn.Module):  # no num_classes parameter: kdpipe resizes its last Linear
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 7)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

def make_tiny(num_classes):
    return TinyNet(num_classes=num_classes, width=6)

def not_a_model():
    return 42

def broken():
    raise RuntimeError("width must be even")
"""


def write(tmp_path: Path, text: str, name: str = "nets.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    return write(tmp_path, NET)


def test_a_class_that_takes_num_classes_is_built_with_it(nets: Path) -> None:
    model = models.create(f"{nets}:TinyNet", 10)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    assert type(model).__name__ == "TinyNet"


def test_a_class_without_num_classes_gets_its_last_linear_resized(nets: Path) -> None:
    model = models.create(f"{nets}:FixedHead", 3)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
    assert model.head.out_features == 3  # type: ignore[union-attr]


def test_a_function_that_returns_a_module_builds_it(nets: Path) -> None:
    model = models.create(f"{nets}:make_tiny", 5)
    assert model.fc.in_features == 6  # type: ignore[union-attr]
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 5)


def test_weights_round_trip_through_a_file_model(nets: Path, tmp_path: Path) -> None:
    a = models.create(f"{nets}:TinyNet", 4)
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = models.create(f"{nets}:TinyNet", 4, tmp_path / "w.pt")
    x = torch.randn(2, 3, 12, 12)
    assert torch.equal(a(x), b(x))


def test_a_model_file_may_import_its_neighbours(tmp_path: Path) -> None:
    write(tmp_path, "from torch import nn\nWIDTH = 5\n", name="blocks_for_kdpipe_test.py")
    path = write(
        tmp_path,
        """
        from torch import nn
        from blocks_for_kdpipe_test import WIDTH

        def net(num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, WIDTH), nn.Linear(WIDTH, num_classes))
        """,
    )
    assert models.create(f"{path}:net", 2)(torch.zeros(1, 3, 4, 4)).shape == (1, 2)


@pytest.mark.parametrize(
    ("attr", "message", "hint"),
    [
        ("TinyNett", "defines no 'TinyNett'", "TinyNet"),
        ("not_a_model", "returned a int, not a torch nn.Module", "nn.Module"),
        ("broken", "building", "fix the model file"),
    ],
)
def test_a_wrong_name_or_builder_is_named(nets: Path, attr: str, message: str, hint: str) -> None:
    with pytest.raises(ModelError) as e:
        models.create(f"{nets}:{attr}", 10)
    assert message in e.value.message and hint in e.value.hint
    if attr == "broken":
        assert "RuntimeError: width must be even" in e.value.message
        assert e.value.hint == "fix the model file; kdpipe calls broken()"


def test_a_file_that_fails_to_import_names_its_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "from torch import nn\n\nx = 1 +\n", name="syntax.py")
    with pytest.raises(ModelError) as e:
        models.check_name(f"{bad}:Net")
    assert f"{bad}:3" in e.value.message and "SyntaxError" in e.value.message
    raising = write(tmp_path, "import torch\n\n\nraise ImportError('no timm here')\n", name="r.py")
    with pytest.raises(ModelError) as e:
        models.check_name(f"{raising}:Net")
    assert f"{raising}:4" in e.value.message and "no timm here" in e.value.message
    # a syntax error in a module the file imports is located in that module
    write(tmp_path, "def f(:\n", name="helper_with_a_typo.py")
    importer = write(tmp_path, "import helper_with_a_typo\n", name="importer.py")
    with pytest.raises(ModelError) as e:
        models.check_name(f"{importer}:Net")
    assert f"{tmp_path / 'helper_with_a_typo.py'}:1" in e.value.message


def test_a_file_without_a_class_name_says_how_to_write_it(nets: Path) -> None:
    with pytest.raises(ModelError) as e:
        models.check_name(str(nets))
    assert "names no class" in e.value.message and f"{nets}:ClassName" in e.value.hint


def test_a_missing_model_file_is_a_config_error_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        build_config({}, {"student.arch": str(tmp_path / "nope.py:Net")})
    assert e.value.message.startswith("invalid value for student.arch: model file ")
    assert "does not exist" in e.value.message and "Value error" not in e.value.message


def test_torchvision_weights_are_refused_for_a_file_model(nets: Path) -> None:
    with pytest.raises(ModelError, match="torchvision has no weights"):
        models.create(f"{nets}:TinyNet", 10, "torchvision")


def test_run_names_use_the_class_name(nets: Path) -> None:
    cfg = build_config({}, {"teacher.arch": f"{nets}:TinyNet", "student.arch": f"{nets}:make_tiny"})
    assert cfg.run_name() == "TinyNet-to-make_tiny-digits"


def test_sources_change_when_the_file_changes(nets: Path) -> None:
    spec = f"{nets}:TinyNet"
    assert sources("resnet18") == []
    before = sources("resnet18", spec)
    assert len(before) == 1 and before[0].startswith(f"{spec}@")
    nets.write_text(nets.read_text() + "\n# width tuned\n")
    assert sources(spec) != before
    # ... and the edited file is imported anew, not served from the first import
    nets.write_text(NET.replace("width=8", "width=3"))
    assert models.create(spec, 2).fc.in_features == 3  # type: ignore[union-attr]


def test_kdpipe_profile_takes_file_name_and_weights(nets: Path, tmp_path: Path) -> None:
    from kdpipe.stages.profile_files import runners_for

    torch.save(models.create(f"{nets}:TinyNet", 10).state_dict(), tmp_path / "w.pt")
    runners, _ = runners_for(f"{nets}:TinyNet:{tmp_path / 'w.pt'}", threads=1)
    assert [(r.target.model, r.target.backend) for r in runners] == [("TinyNet", "torch-cpu")]
    assert runners[0].memory_spec["arch"] == f"{nets}:TinyNet"  # rebuilt in the subprocess
    with pytest.raises(ConfigError) as e:
        runners_for(f"{nets}:TinyNet", threads=1)
    assert "without weights" in e.value.message and ":TinyNet:WEIGHTS.pt" in e.value.hint


def test_editing_a_model_file_changes_what_was_built_from_it(nets: Path) -> None:
    own = build_config({}, {"teacher.arch": f"{nets}:TinyNet", "student.arch": f"{nets}:make_tiny"})
    zoo = build_config({}, {})
    t0, z0 = teacher_fingerprint(own, 10), teacher_fingerprint(zoo, 10)
    d0, dz0 = distill_fingerprint(own, t0), distill_fingerprint(zoo, z0)
    nets.write_text(nets.read_text() + "\n# tuned\n")
    assert teacher_fingerprint(own, 10) != t0  # the teacher is retrained...
    assert distill_fingerprint(own, t0) != d0  # ... and the student, even beside the same teacher
    assert teacher_fingerprint(zoo, 10) == z0 and distill_fingerprint(zoo, z0) == dz0
