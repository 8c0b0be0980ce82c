"""Options declared once: each sets its config keys, and --set reaches any other key."""

from __future__ import annotations

import pytest

from kdpipe.cli.options import OPTIONS, overrides_of, positive_sizes, set_overrides
from kdpipe.core.config import RunConfig, build_config
from kdpipe.core.errors import ConfigError


def test_every_option_names_real_config_keys() -> None:
    cfg = RunConfig().model_dump()
    for name, option in OPTIONS.items():
        for key in option.keys:
            node = cfg
            for part in key.split("."):
                assert part in node, f"--{name}: {key}"
                node = node[part]


def test_options_and_dotted_set_become_the_config() -> None:
    given = {
        "epochs": 3,
        "batch_size": 64,
        "precision": "fp32,int8",
        "set_": ["T=2", "at.p=3", "distill.train.weight_decay=0.01", "profile.batch_sizes=[1, 8]"],
    }
    cfg = build_config({}, overrides_of(given))
    assert cfg.distill.train.epochs == 3
    assert cfg.distill.train.batch_size == cfg.teacher.train.batch_size == 64
    assert cfg.export.precisions == ["fp32", "int8"]
    assert cfg.distill.params == {"T": 2.0, "at.p": 3.0}  # method parameters, composition's too
    assert cfg.distill.train.weight_decay == 0.01
    assert cfg.profile.batch_sizes == [1, 8]


def test_a_section_limits_what_a_command_sets() -> None:
    given = {"out": "export-here", "precision": "fp16", "data": "digits"}
    assert overrides_of(given, ("export",)) == {"export.precisions": ["fp16"]}


@pytest.mark.parametrize("pair", ["distill.train.lr", "distill.train.lr=", "T=fast"])
def test_a_set_without_a_value_is_refused(pair: str) -> None:
    with pytest.raises(ConfigError, match="--set takes"):
        set_overrides([pair])


def test_a_mistyped_dotted_key_names_the_nearest() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'distill.train.weight_decy'") as e:
        build_config({}, set_overrides(["distill.train.weight_decy=0.1"]))
    assert "weight_decay" in e.value.hint


@pytest.mark.parametrize("text", ["3,0,32", ",", "3,x"])
def test_sizes_must_be_positive_numbers(text: str) -> None:
    with pytest.raises(ConfigError, match="--input-size takes"):
        positive_sizes(text, "--input-size")
    assert positive_sizes("3,32,32", "--input-size") == [3, 32, 32]
