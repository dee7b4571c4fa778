"""RenderCall: everything one ``DirecT2VPipeline`` render decides except the prompts and the randomness.

A frozen value, built once (by hand, or from a config by :meth:`RenderCall.from_settings`, the one
translation of a config into a render) and checked once, by :meth:`RenderCall.check`, before any
model runs. The pipeline fills the model's defaults in (:meth:`RenderCall.resolved`) and checks the
result; a call is never corrected silently.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from direct2v.core.schedule import ScheduleError, resolve_schedule
from direct2v.render.rvm import chunk_plan, rvm_reference_frame
from direct2v.render.sampling import SCHEDULERS

if TYPE_CHECKING:  # the GPU check imports the pipeline without pydantic (no settings there)
    from direct2v.core.config import RenderSettings

SchedulerName = Literal["pndm", "ddim", "dpmsolver++", "euler", "euler-ancestral", "lcm"]


@dataclass(frozen=True, kw_only=True)
class RenderCall:
    """The arguments of one render, with ``DirecT2VPipeline.__call__``'s defaults.

    Attributes:
        negative_prompt: shared by all frames (classifier-free guidance's unconditional text).
        num_inference_steps, guidance_scale: as in Stable Diffusion; guidance > 1 enables CFG.
        t0, t1: Text2Video-Zero's steps counted from the end, ``0 <= t0 < t1 <= num_inference_steps - 2``;
            the last ``t1 + 1`` scheduler steps are denoised jointly. None: 90% and 95% of the
            steps (90 and 95 of 100; :func:`direct2v.core.schedule.resolve_schedule`).
        height, width: pixels, multiples of the VAE scale factor; None: the model's native size.
        rvm_period: the RVM period m in steps; ``math.inf`` keeps frame 0 as the reference
            (Text2Video-Zero).
        rvm_blocks: ``"up"`` (the self-attention of the two highest-resolution up blocks with
            attention: SD 1.x's up_blocks.2/.3, the authors' choice; SDXL's up_blocks.0/.1),
            ``"all"``, or a tuple of block names (``("up_blocks.1", "mid_block")``: their
            self-attention; :func:`direct2v.render.attention.rvm_layer_names`).
        value_mapping: ``"rotational"`` (RVM) or ``"random"`` (the paper's ablation: a random
            reference every joint step, drawn from the render's ``reference_generator``;
            ``rvm_period`` unused).
        dsf: dual-softmax filtering (paper Eq. 3-4) on the RVM layers.
        dsf_quantile: phi, the quantile of each layer call's confidences below which (inclusive)
            a query keeps its own frame's attention; see ``DualSoftmaxFilterProcessor``.
        scheduler: ``"pndm"`` (the paper's), ``"ddim"``, ``"dpmsolver++"``, ``"euler"``,
            ``"euler-ancestral"`` or ``"lcm"``, built from the registered scheduler's config;
            None uses the registered scheduler itself. A stochastic sampler's noise at each step
            is drawn per frame from (seed of the render's ``generator``, global frame index, step).
        batch_size: B, the most frames one UNet call may hold (per CFG half); longer videos are
            rendered with cached-attention chunking (``pipeline``'s docstring). F <= B renders in
            one batch.
        motion_strength_x, motion_strength_y: Text2Video-Zero's global translation per frame,
            in pixels of a 512-px canvas.
        output_type: ``"np"``: float32 frames ``(F, H, W, 3)`` in [0, 1]; ``"latent"``: the
            final latents ``(F, 4, H/8, W/8)``.
    """

    negative_prompt: str = ""
    num_inference_steps: int = 100
    guidance_scale: float = 12.0
    t0: int | None = None
    t1: int | None = None
    height: int | None = None
    width: int | None = None
    rvm_period: float = 4
    rvm_blocks: Literal["up", "all"] | tuple[str, ...] = "up"
    value_mapping: Literal["rotational", "random"] = "rotational"
    dsf: bool = True
    dsf_quantile: float = 0.05
    scheduler: SchedulerName | None = None
    batch_size: int = 8
    motion_strength_x: float = 0.0
    motion_strength_y: float = 0.0
    output_type: Literal["np", "latent"] = "np"

    @classmethod
    def from_settings(cls, settings: RenderSettings) -> RenderCall:
        """The call ``settings`` describe: the one translation of a config into a render."""
        schedule = settings.schedule()
        return cls(
            negative_prompt=settings.negative_prompt,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.resolved_guidance_scale(),
            t0=schedule.t0,
            t1=schedule.t1,
            height=settings.height,
            width=settings.width,
            rvm_period=schedule.period,
            rvm_blocks=settings.rvm_blocks,
            value_mapping=settings.value_mapping,
            dsf=settings.dsf,
            dsf_quantile=settings.dsf_quantile,
            scheduler=settings.scheduler,
            batch_size=settings.batch_size,
            motion_strength_x=settings.motion_strength_x,
            motion_strength_y=settings.motion_strength_y,
        )

    def replace(self, **changes) -> RenderCall:
        """This call with some fields changed (a TypeError names a field it does not have)."""
        return dataclasses.replace(self, **changes)

    def resolved(self, native_size: int) -> RenderCall:
        """This call with a model's defaults filled in: ``height``/``width`` (``native_size``
        pixels) and the Text2Video-Zero window ``t0``/``t1`` of ``num_inference_steps``.

        Raises:
            ValueError: the steps leave no window for a missing ``t0``/``t1``.
        """
        t0, t1 = self.t0, self.t1
        if t0 is None or t1 is None:
            try:
                window = resolve_schedule(self.num_inference_steps, t0=t0, t1=t1)
            except ScheduleError as error:
                raise ValueError(str(error)) from None
            t0, t1 = window.t0, window.t1
        return self.replace(height=self.height or native_size, width=self.width or native_size, t0=t0, t1=t1)

    def check(
        self, frame_prompts: Sequence[str], vae_scale_factor: int, reference_generator: torch.Generator | None
    ) -> None:
        """Reject every bad argument of a :meth:`resolved` call for ``frame_prompts`` before any model runs.

        Raises:
            ValueError: naming the first bad argument.
        """
        if not isinstance(frame_prompts, (list, tuple)) or not frame_prompts:
            raise ValueError("frame_prompts must be a non-empty list of strings")
        blank = [i for i, prompt in enumerate(frame_prompts) if not isinstance(prompt, str) or not prompt.strip()]
        if blank:
            raise ValueError(f"frame_prompts must be non-empty strings; bad frames (0-based): {blank}")
        steps, t0, t1 = self.num_inference_steps, self.t0, self.t1
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (steps, t0, t1)):
            raise ValueError("num_inference_steps, t0 and t1 must be ints")
        if not 0 <= t0 < t1 < steps:
            raise ValueError(
                f"need 0 <= t0 < t1 < num_inference_steps, got t0={t0}, t1={t1}, num_inference_steps={steps}"
            )
        height, width, factor = self.height, self.width, vae_scale_factor
        if height <= 0 or width <= 0 or height % factor or width % factor:
            raise ValueError(f"height and width must be positive multiples of {factor}, got {height}x{width}")
        rvm_reference_frame(0, len(frame_prompts), self.rvm_period)  # raises ValueError for a bad period
        blocks = self.rvm_blocks
        named = isinstance(blocks, tuple) and blocks and all(isinstance(block, str) and block for block in blocks)
        if blocks not in ("up", "all") and not named:
            raise ValueError(f"rvm_blocks must be 'up', 'all' or a tuple of block names, got {blocks!r}")
        if not (math.isfinite(self.motion_strength_x) and math.isfinite(self.motion_strength_y)):
            raise ValueError(f"motion strengths must be finite, got {self.motion_strength_x}, {self.motion_strength_y}")
        if self.output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {self.output_type!r}")
        if self.value_mapping not in ("rotational", "random"):
            raise ValueError(f"value_mapping must be 'rotational' or 'random', got {self.value_mapping!r}")
        if self.value_mapping == "random" and not isinstance(reference_generator, torch.Generator):
            raise ValueError("value_mapping='random' needs a reference_generator (a torch.Generator of its own)")
        if not isinstance(self.dsf, bool):
            raise ValueError(f"dsf must be a bool, got {self.dsf!r}")
        quantile = self.dsf_quantile
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 <= quantile < 1:
            raise ValueError(f"dsf_quantile must be in [0, 1), got {quantile!r}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)} or None, got {self.scheduler!r}")
        chunk_plan(len(frame_prompts), self.batch_size)  # raises ValueError for a bad batch size
