"""Accuracy helpers: top-1, agreement, and the near-chance threshold behind the warning."""

from __future__ import annotations

import torch

from kdpipe.runtimes.accuracy import agreement, near_chance, top1


def test_top1_and_agreement_by_hand() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    assert top1(logits, torch.tensor([0, 1, 1, 1])) == 0.5
    other = torch.tensor([[0.0, 1.0], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    assert agreement(logits, other) == 0.75


def test_near_chance_is_a_tenth_of_the_way_to_perfect() -> None:
    # 10 classes: chance 10 %, threshold 19 %; 2 classes: 50 % -> 55 %
    assert near_chance(0.10, 10) and near_chance(0.189, 10)
    assert not near_chance(0.191, 10) and not near_chance(0.228, 10)
    assert near_chance(0.54, 2) and not near_chance(0.56, 2)


def test_the_warning_says_below_chance_when_it_is(capsys) -> None:  # type: ignore[no-untyped-def]
    from kdpipe.runtimes.accuracy import warn_near_chance

    warn_near_chance("student", "m", 0.20, 2, "try more --epochs")
    warn_near_chance("student", "m", 0.52, 2, "try more --epochs")
    warn_near_chance("student", "m", 0.90, 2, "try more --epochs")
    err = capsys.readouterr().err.replace("\n", " ")
    assert "20.0 % test top-1, below chance (50.0 %)" in err
    assert "52.0 % test top-1, near chance" in err and "90.0" not in err
