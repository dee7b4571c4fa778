"""Rotational value mapping (RVM): which frame every frame attends to, as pure functions.

DirecT2V (paper Eq. 2) replaces the self-attention of each frame f by
``softmax(Q_f K_r^T / sqrt(d)) V_r``, where r is a *reference frame* that rotates over the video
while the frames are denoised together. These functions only say which r to use at a step; the
attention itself lives in :mod:`direct2v.attention`, the step bookkeeping in the pipeline. Keeping
the schedule model-free makes it trivial to test.
"""

from __future__ import annotations

import math

import torch


def _check_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


def rvm_reference_frame(step: int, num_frames: int, period: float) -> int:
    """The reference frame ``r(t') = floor(t'/m) mod F`` of the joint denoising step ``t'``.

    Convention: ``step`` (t') is the 0-based index of the denoising step counted from the first
    step of the joint pass (the first UNet call in which all frames are denoised together), and
    frames are 0-based. So the first reference block lasts exactly ``period`` (m) steps: with m=4,
    steps 0-3 use frame 0, steps 4-7 frame 1, and so on, wrapping around after F blocks.

    The authors' public demo counts t' from 1 (its counter is incremented before each UNet call),
    so there the first block lasts only m-1 steps and every reference is one step earlier; the
    paper's Eq. 2 does not fix the origin, and counting from 0 gives every frame equal blocks.

    ``period=math.inf`` always returns frame 0: that is Text2Video-Zero's cross-frame attention.

    Raises:
        ValueError: for a negative or non-integer step, fewer than one frame, or a period that is
            neither a whole number >= 1 nor infinity.
    """
    _check_step(step)
    _check_frames(num_frames)
    if isinstance(period, bool) or not isinstance(period, (int, float)):
        raise ValueError(f"period must be a number, got {period!r}")
    if math.isinf(period) and period > 0:
        return 0
    if math.isnan(period) or period < 1 or not float(period).is_integer():
        raise ValueError(f"period must be a whole number of steps >= 1 or math.inf, got {period!r}")
    return (step // int(period)) % num_frames


def random_reference_frame(step: int, num_frames: int, generator: torch.Generator) -> int:
    """A uniformly random reference frame: the paper's "random VM" ablation.

    Draws one integer in [0, num_frames) from ``generator``; the result depends only on the
    generator's seed and on how many steps have drawn from it before, so the caller must call it
    exactly once per step, in step order, with a generator of its own (not the one that draws the
    latent noise, or the ablation would change the noise). ``step`` is validated but does not enter
    the draw; it is there so that both schedules share one calling convention.
    """
    _check_step(step)
    _check_frames(num_frames)
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return int(torch.randint(num_frames, (1,), generator=generator, device=generator.device).item())
