"""Accuracy helpers: top-1, agreement, and the near-chance threshold behind the warning."""

from __future__ import annotations

import torch

from kdpipe.profile.accuracy import agreement, near_chance, top1


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
