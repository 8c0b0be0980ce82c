"""Config validation: typos get suggestions, bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdpipe.core.config import RunConfig, build_config, load_config_file
from kdpipe.core.errors import ConfigError


def test_defaults_are_the_product_command() -> None:
    cfg = build_config({}, {})
    assert (cfg.teacher.arch, cfg.student.arch, cfg.data.spec) == ("resnet50", "resnet18", "digits")
    assert cfg.distill.method == "kd" and cfg.export.precisions == ["fp32", "int8"]
    assert cfg.out_dir() == Path("runs/resnet50-to-resnet18-digits")


def test_overrides_beat_the_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("student:\n  arch: resnet34\ndistill:\n  train:\n    epochs: 3\n")
    cfg = build_config(load_config_file(f), {"distill.train.epochs": 5, "teacher.arch": None})
    assert cfg.student.arch == "resnet34" and cfg.distill.train.epochs == 5
    assert cfg.teacher.arch == "resnet50"


def test_toml_file(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[profile]\nbatch_sizes = [8, 1]\n")
    assert build_config(load_config_file(f), {}).profile.batch_sizes == [1, 8]


def test_typo_suggests_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'distill.epoch'") as e:
        build_config({"distill": {"epoch": 3}}, {})
    assert "train" in e.value.hint or "epochs" in e.value.hint
    with pytest.raises(ConfigError) as e:
        build_config({"profile": {"batch_size": [1]}}, {})
    assert "batch_sizes" in e.value.hint


def test_a_key_at_the_wrong_level_names_its_section() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'epochs'") as e:
        build_config({"epochs": 3}, {})
    assert (
        e.value.hint == "'epochs' belongs in a section: teacher.train.epochs, distill.train.epochs"
    )
    with pytest.raises(ConfigError, match="unknown config key 'distill.lr'") as e:
        build_config({"distill": {"lr": 0.1}}, {})  # the section it was written in first
    assert e.value.hint == "'lr' belongs in a section: distill.train.lr"


def test_config_files_are_read_up_to_a_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)  # 2 MB of comments: valid YAML, not a config
    with pytest.raises(ConfigError, match="larger than 1 MiB; is it the right file"):
        load_config_file(big)
    with pytest.raises(ConfigError, match="larger than 1 MiB"):
        load_config_file(Path("/dev/zero"))  # endless: was read until memory ran out


@pytest.mark.parametrize(
    "key,value",
    [
        ("distill.train.epochs", 0),
        ("export.precisions", ["fp8"]),
        ("profile.batch_sizes", [0]),
        ("data.val_fraction", 0.9),
        ("seed", -1),
        ("seed", 2**32),  # NumPy and scikit-learn take 32-bit seeds: an internal error before
        ("profile.min_seconds", float("inf")),  # the profile stage would time forever
        ("profile.warmup_seconds", float("inf")),
        ("distill.terms", {"kd": float("nan")}),  # trained to a NaN loss at step 1
    ],
)
def test_bad_values_name_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=key.rpartition(".")[0] or key):
        build_config({}, {key: value})


def test_fp32_is_always_exported_first() -> None:
    assert build_config({}, {"export.precisions": ["int8"]}).export.precisions == ["fp32", "int8"]


def test_broken_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid"):
        load_config_file(f)


def test_a_section_given_in_part_keeps_its_other_defaults() -> None:
    # --teacher-epochs alone used to rebuild teacher.train from TrainConfig's class defaults,
    # dropping the teacher recipe's lr 3e-3; --lr alone turned the 8 distill epochs into 10.
    default = build_config({}, {})
    cfg = build_config({}, {"teacher.train.epochs": 3, "distill.train.lr": 5e-4})
    assert cfg.teacher.train.epochs == 3
    assert cfg.teacher.train.lr == default.teacher.train.lr == 3e-3
    assert cfg.distill.train.lr == 5e-4
    assert cfg.distill.train.epochs == default.distill.train.epochs == 8
    from_file = build_config({"teacher": {"train": {"batch_size": 64}}}, {})
    assert from_file.teacher.train.batch_size == 64 and from_file.teacher.train.epochs == 8


def test_how_data_is_loaded_does_not_change_what_a_stage_is() -> None:
    # More DataLoader workers, or --strict-data, train nothing again (and miss no cache).
    from kdpipe.stages.distill import distill_fingerprint
    from kdpipe.stages.teacher import teacher_fingerprint

    base = RunConfig()
    t0 = teacher_fingerprint(base, 10)
    d0 = distill_fingerprint(base, t0)
    for change in ({"workers": 4}, {"strict": True}):
        cfg = RunConfig(data=base.data.model_copy(update=change))
        assert teacher_fingerprint(cfg, 10) == t0 and distill_fingerprint(cfg, t0) == d0, change
    other = RunConfig(data=base.data.model_copy(update={"image_size": 48}))
    assert teacher_fingerprint(other, 10) != t0 and distill_fingerprint(other, t0) != d0
