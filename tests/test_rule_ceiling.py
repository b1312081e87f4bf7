"""scripts/rule_ceiling.py: the geometric rules that bound what the sampled boxes hold, on hand-made tracks."""

from __future__ import annotations

import pytest
import torch

NAMES = ["red circle", "blue square"]


@pytest.fixture(scope="module")
def rules(load_script):
    return load_script("rule_ceiling")


def _boxes(centres: list[list[tuple[float, float]]], half: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.tensor(centres)  # (R, K, 2)
    return torch.cat([c - half, c + half], dim=-1), torch.ones(c.shape[:2], dtype=torch.bool)


def test_a_hit_then_a_wall(rules):
    # red moves right into blue (contact at row 2) and stops; blue is pushed right and bounces off the right edge
    red = [(0.30, 0.5), (0.40, 0.5), (0.50, 0.5), (0.50, 0.5), (0.50, 0.5), (0.50, 0.5)]
    blue = [(0.66, 0.5), (0.66, 0.5), (0.66, 0.5), (0.79, 0.5), (0.90, 0.5), (0.80, 0.5)]
    boxes, mask = _boxes([list(r) for r in zip(red, blue)])
    ask = lambda t, q: rules.answer(t, q, NAMES, boxes, mask)  # noqa: E731
    assert ask("first_hit", "What did the red circle hit first?") == "blue square"
    assert ask("why_turn", "Why did the red circle change direction?") == "it hit the blue square"
    assert ask("last_hit", "What did the blue square hit last?") == "a wall"
    assert ask("first_wall", "Which object hit a wall first?") == "blue square"
    assert ask("fastest", "Which object moves fastest?") == "blue square"
    assert ask("count", "How many objects are there?") == "two"
    assert ask("shape", "What shape is the red object?") is None  # no rule


def test_next_wall_is_the_soonest_edge(rules):
    # both move right; blue is nearer the right edge at the same speed
    red = [(0.20, 0.3), (0.25, 0.3), (0.30, 0.3)]
    blue = [(0.60, 0.7), (0.65, 0.7), (0.70, 0.7)]
    boxes, mask = _boxes([list(r) for r in zip(red, blue)])
    assert rules.answer("next_wall", "Which object will hit a wall next?", NAMES, boxes, mask) == "blue square"


def test_absent_boxes_are_not_turns(rules):
    red = [(0.30, 0.5), (0.40, 0.5), (0.20, 0.5), (0.60, 0.5)]
    blue = [(0.80, 0.2)] * 4
    boxes, mask = _boxes([list(r) for r in zip(red, blue)])
    mask[1:3, 0] = False  # red is lost where its track jumps
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    assert rules.turns(centre, mask) == [[], []]


def test_next_hit_follows_the_last_motion(rules):
    # red heads right toward blue, which stands in its path; then red turns toward the top edge instead
    red = [(0.20, 0.5), (0.25, 0.5), (0.30, 0.5)]
    blue = [(0.60, 0.5)] * 3
    boxes, mask = _boxes([list(r) for r in zip(red, blue)])
    ask = lambda: rules.answer("next_hit", "What will the red circle hit next?", NAMES, boxes, mask)  # noqa: E731
    assert ask() == "blue square"
    red[-1] = (0.25, 0.4)  # the last row moves up: the top edge comes first
    boxes, mask = _boxes([list(r) for r in zip(red, blue)])
    assert ask() == "a wall"
    mask[1:, 0] = False  # no motion known for red: no answer
    assert ask() is None
