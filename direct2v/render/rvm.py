"""Rotational value mapping (RVM): which frame every frame attends to, as pure functions.

DirecT2V (paper Eq. 2) replaces the self-attention of each frame f by
``softmax(Q_f K_r^T / sqrt(d)) V_r``, where r is a *reference frame* that rotates over the video
while the frames are denoised together. These functions only say which r to use at a step; the
attention itself lives in :mod:`direct2v.render.attention`, the step bookkeeping in the pipeline. Keeping
the schedule model-free makes it trivial to test.

Chunked rendering (videos longer than one UNet batch) is planned here too: :func:`chunk_plan` says
which frames are rendered together, and :func:`cached_anchor_steps` which anchor key/values a
later section will read, so that the cache holds exactly those.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def _check_frames(num_frames: int) -> None:
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")


def _check_step(step: int) -> None:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")


def rvm_reference_frame(step: int, num_frames: int, period: float) -> int:
    """The reference frame of the joint denoising step ``step``: the paper's ``r(t')``, 0-based.

    The workshop paper defines ``r(t') = Mod(floor(t'/m), F) + 1`` with t' = 1..T' counting the
    joint steps and frames numbered from 1; the authors' code computes the same (its step counter
    is appended before each UNet call, so the first call sees t' = 1). Here ``step`` is the 0-based
    index of the joint step (t' = step + 1) and frames are 0-based, so the result is
    ``floor((step + 1) / m) mod F``: with m = 4 the first block lasts m - 1 = 3 steps (steps 0-2
    use frame 0), every later one m (steps 3-6 frame 1, ...), wrapping around after F blocks.

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
    t_prime = step + 1
    return (t_prime // int(period)) % num_frames


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


def reference_schedule(
    num_steps: int,
    num_frames: int,
    mode: str = "rotational",
    period: float = 4,
    generator: torch.Generator | None = None,
) -> list[int]:
    """The reference frame of every joint step (0-based ``step = 0 .. num_steps-1``), one list per pass.

    ``"rotational"``: :func:`rvm_reference_frame` (``period`` is m). ``"random"``: the paper's
    random-VM ablation, one :func:`random_reference_frame` draw per step in step order from
    ``generator`` (``period`` is unused: the reference changes every step, as the paper describes
    it). Computing the whole schedule up front, before any UNet call, is what lets chunked
    rendering know which anchor steps to cache.

    Raises:
        ValueError: for an unknown ``mode``, a random mode without a generator, or bad counts.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative int, got {num_steps!r}")
    if mode == "rotational":
        return [rvm_reference_frame(step, num_frames, period) for step in range(num_steps)]
    if mode == "random":
        if generator is None:
            raise ValueError("the random value-mapping ablation needs a generator of its own")
        return [random_reference_frame(step, num_frames, generator) for step in range(num_steps)]
    raise ValueError(f"mode must be 'rotational' or 'random', got {mode!r}")


# --- cached-attention chunking (paper §4.3) -------------------------------------------------------


@dataclass(frozen=True)
class ChunkPlan:
    """Which global frames are rendered together.

    Attributes:
        anchors: the frames rendered first, in one UNet batch; with ``sections`` empty this is the
            whole video (no chunking).
        sections: the later frames in consecutive runs of at most ``len(anchors)``; section ``s``
            is denoised in a UNet batch of its own frames, as the virtual batch
            ``[*anchors, *section]`` whose anchor key/values come from the cache.
    """

    anchors: range
    sections: tuple[range, ...] = ()

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    def virtual_batch(self, section: int) -> tuple[int, ...]:
        """Global frame indices of section ``section``'s virtual batch: the anchors, then its frames."""
        return (*self.anchors, *self.sections[section])


def chunk_plan(num_frames: int, batch_size: int) -> ChunkPlan:
    """Split a video of ``num_frames`` for UNet calls of at most ``batch_size`` frames (B).

    ``num_frames <= B``: one batch, ``ChunkPlan(anchors=range(F))``: the non-chunked render.
    Otherwise the first ``A = floor(B/2)`` frames are the anchors and the rest follow in sections of
    ``A`` frames (the last one shorter when ``F - A`` is not a multiple of ``A``), so a section's
    virtual batch ``[anchors, section]`` holds at most ``2A <= B`` frames and no UNet call more
    than ``A``.

    Raises:
        ValueError: for ``num_frames < 1`` or ``batch_size < 2`` (one anchor and one new frame is
            the smallest virtual batch).
    """
    _check_frames(num_frames)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2, got {batch_size!r}")
    if num_frames <= batch_size:
        return ChunkPlan(anchors=range(num_frames))
    size = batch_size // 2
    sections = tuple(range(start, min(start + size, num_frames)) for start in range(size, num_frames, size))
    return ChunkPlan(anchors=range(size), sections=sections)


def cached_anchor_steps(section_schedules: Sequence[Sequence[int]], num_anchors: int) -> frozenset[tuple[int, int]]:
    """The ``(step, anchor)`` pairs whose key/value some section will read: all the cache must keep.

    ``section_schedules[s][t']`` is section s's reference at joint step t', an index into its
    virtual batch; indices below ``num_anchors`` are anchors (read from the cache), the others are
    frames of the section itself (in its UNet batch). Rotational schedules of sections of equal
    length are identical, so the set holds at most one anchor per step and per distinct section
    length (at most two lengths): its size, and so the cache's, does not grow with the video.
    """
    return frozenset(
        (step, reference)
        for schedule in section_schedules
        for step, reference in enumerate(schedule)
        if reference < num_anchors
    )
