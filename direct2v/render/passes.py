"""What one denoising pass of a render needs besides its scheduler, latents and timesteps
(:class:`DenoisePass`), and the render's count of UNet evaluations (:class:`Progress`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from direct2v.render.conditioning import TextConditioning
from direct2v.render.reference import AnchorKVCache, FrameReference


class Progress:
    """Counts UNet evaluations and reports ``(done, total)`` to an optional callback."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


@dataclass(frozen=True)
class DenoisePass:
    """One denoising segment of a batch of frames: frame 1 alone, the joint pass, or (chunked) the
    anchors or one section."""

    negative: TextConditioning  # the negative prompt's, one row per frame
    positive: TextConditioning  # one frame prompt per row
    guidance_scale: float
    generator: torch.Generator | None
    state: FrameReference
    reference: Callable[[int], int]  # step index within the segment -> reference frame (virtual batch)
    tracker: Progress
    label: str  # names the segment in errors
    frame_ids: range  # the GLOBAL indices of the batch's frames (a stochastic sampler's noise keys)
    record_to: AnchorKVCache | None = None  # the anchor pass of a chunked render
    anchors: AnchorKVCache | None = None  # a section of a chunked render
