"""The RVM reference-frame schedule as pure functions (no model)."""

from __future__ import annotations

import math

import pytest
import torch

from direct2v.render.rvm import random_reference_frame, rvm_reference_frame


def schedule(steps: int, frames: int, period: float) -> list[int]:
    return [rvm_reference_frame(step, frames, period) for step in range(steps)]


def paper_reference(t_prime: int, frames: int, period: int) -> int:
    """The workshop paper's r(t') = Mod(floor(t'/m), F) + 1, t' = 1..T', frames numbered from 1."""
    return (t_prime // period) % frames + 1


def test_sequence_follows_the_paper_for_its_96_joint_steps():
    ours = schedule(96, 8, 4)
    assert ours == [paper_reference(t_prime, 8, 4) - 1 for t_prime in range(1, 97)]
    # t' counts from 1: the first block is m - 1 = 3 steps long, every later one m = 4.
    assert ours[:8] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert ours[-5:] == [7, 7, 7, 7, 0]  # t' = 92..95 -> floor(t'/4) = 23 -> frame 7; t' = 96 -> 24 mod 8 = 0
    assert [ours.count(frame) for frame in range(8)] == [12] * 8  # 3 + 4 + 4 + 1 steps for frame 0


def test_period_one_rotates_every_step_and_wraps():
    assert schedule(7, 3, 1) == [1, 2, 0, 1, 2, 0, 1]


def test_period_four_counts_t_prime_from_one():
    assert schedule(12, 3, 4) == [0] * 3 + [1] * 4 + [2] * 4 + [0]
    assert rvm_reference_frame(11, 3, 4) == 0  # wrap-around after F blocks


def test_float_period_is_accepted_when_whole():
    assert schedule(9, 2, 4.0) == schedule(9, 2, 4)


def test_infinite_period_is_text2video_zero():
    assert set(schedule(200, 8, math.inf)) == {0}


def test_single_frame_is_always_its_own_reference():
    assert set(schedule(20, 1, 1)) == {0}
    assert set(schedule(20, 1, 4)) == {0}


@pytest.mark.parametrize(
    "step, frames, period",
    [
        (-1, 4, 4),
        (1.0, 4, 4),
        (True, 4, 4),
        (0, 0, 4),
        (0, -2, 4),
        (0, 2.0, 4),
        (0, 4, 0),
        (0, 4, 0.5),
        (0, 4, 2.5),
        (0, 4, -math.inf),
        (0, 4, math.nan),
        (0, 4, "4"),
    ],
)
def test_invalid_arguments_raise(step, frames, period):
    with pytest.raises(ValueError):
        rvm_reference_frame(step, frames, period)


def draws(seed: int, steps: int, frames: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [random_reference_frame(step, frames, generator) for step in range(steps)]


def test_random_reference_is_deterministic_for_a_seed():
    assert draws(7, 50, 5) == draws(7, 50, 5)
    assert draws(7, 50, 5) != draws(8, 50, 5)


def test_random_reference_covers_the_frames():
    values = draws(0, 200, 5)
    assert set(values) == set(range(5))
    assert set(draws(0, 20, 1)) == {0}


def test_random_reference_validates():
    with pytest.raises(ValueError):
        random_reference_frame(0, 0, torch.Generator())
    with pytest.raises(ValueError):
        random_reference_frame(-1, 3, torch.Generator())
    with pytest.raises(ValueError):
        random_reference_frame(0, 3, 123)
