"""Text2Video-Zero's latent schedule, the parts that call no model: which scheduler timesteps each
denoising segment runs (:class:`Segments`), and the motion field that moves frame 1's x_t0 to the
other frames (:func:`translate_latents`). ``pipeline``'s docstring tells the whole schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Text2Video-Zero expresses motion in pixels of a 512 x 512 canvas, whatever the image size.
MOTION_CANVAS = 512


@dataclass(frozen=True)
class Segments:
    """A render's scheduler timesteps cut at Text2Video-Zero's t1 and t0 (steps counted from the end)."""

    first: torch.Tensor  # frame 1 alone, x_T -> x_t1
    second: torch.Tensor  # frame 1 alone, x_t1 -> x_t0
    joint: torch.Tensor  # all frames, x_t1 -> x_0
    t0_index: int  # index of x_t0's step in the timesteps: the forward process starts there...
    t1_index: int  # ...and goes back to this one

    @classmethod
    def split(cls, timesteps: torch.Tensor, t0: int, t1: int) -> Segments:
        """Cut ``timesteps``; raise ValueError when t1 leaves no step for frame 1 alone."""
        if t1 + 1 >= len(timesteps):
            raise ValueError(f"t1={t1} leaves no step for frame 1 alone: the scheduler has {len(timesteps)} steps")
        first, second, joint = timesteps[: -t1 - 1], timesteps[-t1 - 1 : -t0 - 1], timesteps[-t1 - 1 :]
        return cls(first, second, joint, len(timesteps) - t0 - 1, len(timesteps) - t1 - 1)

    def unet_evaluations(self, num_frames: int, joint_passes: int) -> int:
        """UNet calls of a render (a progress total): frame 1's passes (its second only when there
        are other frames to hand x_t0 to), then each joint pass."""
        return len(self.first) + (len(self.second) if num_frames > 1 else 0) + len(self.joint) * joint_passes


def translate_latents(
    latents: torch.Tensor, frame_ids: Sequence[int], strength_x: float, strength_y: float
) -> torch.Tensor:
    """Shift each latent frame by ``strength * frame_id`` canvas pixels (Text2Video-Zero's motion field).

    Output pixel (i, j) of frame k takes the nearest input pixel at ``(i, j) + strength * k`` with
    reflection at the borders, so a positive strength moves the content left/up. As in
    Text2Video-Zero the shift is measured on a 512-pixel canvas: a latent cell spans
    ``512 / latent_size`` canvas pixels. diffusers builds a 512 x 512 flow field and resizes it
    bilinearly to the latent size; on a uniform field that resize is exact, so the sampling grid is
    written here directly at latent resolution.
    """
    count, _, height, width = latents.shape
    if len(frame_ids) != count:
        raise ValueError(f"got {len(frame_ids)} frame ids for {count} latent frames")
    ids = torch.as_tensor(list(frame_ids), dtype=torch.float32, device=latents.device)[:, None]

    def axis(size: int, strength: float) -> torch.Tensor:
        # canvas position of each latent cell centre (as sampled by the bilinear resize), shifted
        centres = (torch.arange(size, device=latents.device) + 0.5) * (MOTION_CANVAS / size) - 0.5
        shifted = centres.clamp(0, MOTION_CANVAS - 1)[None, :] + strength * ids
        return shifted / MOTION_CANVAS * 2 - 1  # (count, size) in grid_sample's [-1, 1]

    grid_x = axis(width, strength_x)[:, None, :].expand(count, height, width)
    grid_y = axis(height, strength_y)[:, :, None].expand(count, height, width)
    grid = torch.stack([grid_x, grid_y], dim=-1).to(latents.dtype)
    return F.grid_sample(latents, grid, mode="nearest", padding_mode="reflection", align_corners=False)
