"""DirecT2VPipeline: per-frame prompts, the Text2Video-Zero latent schedule, rotational value mapping.

The latent schedule is Text2Video-Zero's, step for step as diffusers' (deprecated)
``TextToVideoZeroPipeline`` runs it, so that with ``rvm_period=inf`` and ``rvm_blocks="all"`` the two
pipelines give the same video for the same seed (tests/test_oracle.py checks it):

1. frame 1 alone is denoised from x_T over ``timesteps[:-t1-1]`` (reaching x_t1); the scheduler is
   deep-copied right there, then frame 1 goes on over ``timesteps[-t1-1:-t0-1]`` (reaching x_t0);
2. x_t0 is copied to frames 2..F, each translated by the motion field (strength x its frame index)
   and pushed back to t1 with the DDPM forward process;
3. all frames (frame 1 from its own x_t1) are denoised together over ``timesteps[-t1-1:]`` with the
   scheduler copy, each frame with its own prompt, while rotational value mapping makes every frame
   attend to a reference frame that changes every ``rvm_period`` steps.

Deliberate differences from diffusers: one prompt per frame; frame 1's first passes use frame 1's
own (negative, positive) pair (the authors' demo used two negatives there); the pipeline's
registered scheduler is not replaced by the copy after a call.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer

from .attention import FrameReference, install_rvm
from .rvm import rvm_reference_frame

log = logging.getLogger(__name__)

#: Text2Video-Zero expresses motion in pixels of a 512 x 512 canvas, whatever the image size.
MOTION_CANVAS = 512

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")

#: Files each component subfolder must hold; one name of each inner tuple is enough.
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",), _DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), _DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), ("model.safetensors", "model.safetensors.index.json")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
    "scheduler": (("scheduler_config.json",),),
}


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


def forward_diffuse(
    latents: torch.Tensor, alphas: torch.Tensor, t_from: int, t_to: int, generator: torch.Generator | None
) -> torch.Tensor:
    """DDPM forward process from timestep ``t_from`` to ``t_to`` > ``t_from``, as Text2Video-Zero does it.

    The signal factor is ``prod(alphas[t_from:t_to])`` (Text2Video-Zero's indexing; the exact
    transition would be ``alphas[t_from+1:t_to+1]``, a one-step difference that is kept here for
    equality with diffusers). One normal draw of the latents' shape is taken from ``generator``.
    """
    noise = _randn(latents.shape, generator, latents.device, latents.dtype)
    alpha = torch.prod(alphas[t_from:t_to])
    return torch.sqrt(alpha) * latents + torch.sqrt(1 - alpha) * noise


def _randn(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so a CPU seed gives the same video on any device)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


class _Progress:
    """Counts UNet evaluations and reports ``(done, total)`` to an optional callback."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


@dataclass(frozen=True)
class _Pass:
    """What one denoising segment needs besides the scheduler, latents and timesteps."""

    negative: torch.Tensor  # (frames, 77, dim) negative-prompt embeddings
    positive: torch.Tensor  # (frames, 77, dim) one frame prompt per row
    guidance_scale: float
    generator: torch.Generator | None
    state: FrameReference
    reference: Callable[[int], int]  # step index within the segment -> reference frame
    tracker: _Progress


class DirecT2VPipeline(DiffusionPipeline):
    """Stable Diffusion 1.x turned into a video renderer: one prompt per frame, RVM self-attention."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_local_dir(
        cls, path: str | Path, torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> DirecT2VPipeline:
        """Load a local diffusers-format Stable Diffusion 1.x directory, offline and safetensors only.

        Raises:
            FileNotFoundError: the directory, a component subfolder or a required file is missing
                (the message lists every missing item).
        """
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"model directory not found: {root}")
        missing = [
            f"{component}/{' or '.join(names)}"
            for component, groups in REQUIRED_FILES.items()
            for names in groups
            if not any((root / component / name).is_file() for name in names)
        ]
        if missing:
            raise FileNotFoundError(
                f"{root} is not a complete diffusers Stable Diffusion directory; missing: {', '.join(missing)}"
            )
        local = {"local_files_only": True, "use_safetensors": True}
        pipeline = cls(
            vae=AutoencoderKL.from_pretrained(root, subfolder="vae", torch_dtype=torch_dtype, **local),
            text_encoder=CLIPTextModel.from_pretrained(root, subfolder="text_encoder", dtype=torch_dtype, **local),
            tokenizer=CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
            unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", torch_dtype=torch_dtype, **local),
            scheduler=PNDMScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True),
        )
        return pipeline.to(device)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings ``(len(prompts), 77, dim)``, all prompts in one encoder call.

        Prompts longer than the tokenizer's limit are truncated by CLIP; that is logged, since the
        end of a frame description would silently be ignored.
        """
        limit = self.tokenizer.model_max_length
        lengths = [len(ids) for ids in self.tokenizer(list(prompts)).input_ids]
        for prompt, length in zip(prompts, lengths):
            if length > limit:
                log.warning("prompt truncated to %d of its %d CLIP tokens: %r", limit, length, prompt)
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=limit, truncation=True, return_tensors="pt"
        ).input_ids
        embeddings = self.text_encoder(ids.to(self._execution_device))[0]
        return embeddings.to(dtype=self.text_encoder.dtype)

    @torch.no_grad()
    def __call__(
        self,
        frame_prompts: list[str],
        negative_prompt: str = "",
        num_inference_steps: int = 100,
        guidance_scale: float = 12.0,
        t0: int = 90,
        t1: int = 95,
        height: int | None = None,
        width: int | None = None,
        rvm_period: float = 4,
        rvm_blocks: Literal["up", "all"] = "up",
        motion_strength_x: float = 0.0,
        motion_strength_y: float = 0.0,
        generator: torch.Generator | None = None,
        output_type: Literal["np", "latent"] = "np",
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Render one video, frame f from ``frame_prompts[f]``.

        Args:
            frame_prompts: one description per frame (F >= 1).
            negative_prompt: shared by all frames (classifier-free guidance's unconditional text).
            num_inference_steps, guidance_scale: as in Stable Diffusion; guidance > 1 enables CFG.
            t0, t1: Text2Video-Zero's steps counted from the end, ``0 <= t0 < t1 < num_inference_steps``;
                the last ``t1 + 1`` scheduler steps are denoised jointly.
            height, width: pixels, multiples of the VAE scale factor; default the model's native size.
            rvm_period: the RVM period m in steps; ``math.inf`` keeps frame 0 as the reference
                (Text2Video-Zero).
            rvm_blocks: ``"up"`` (up_blocks.2/.3 self-attention, the authors' choice) or ``"all"``.
            motion_strength_x, motion_strength_y: Text2Video-Zero's global translation per frame,
                in pixels of a 512-px canvas.
            generator: the only source of randomness (initial noise, then the forward-process
                noise); the same seed gives the same video.
            output_type: ``"np"``: float32 frames ``(F, H, W, 3)`` in [0, 1]; ``"latent"``: the
                final latents ``(F, 4, H/8, W/8)``.
            progress: called as ``progress(done, total)`` after every UNet evaluation.
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self._check_inputs(
            frame_prompts, num_inference_steps, t0, t1, height, width, rvm_period, rvm_blocks,
            motion_strength_x, motion_strength_y, output_type,
        )
        num_frames = len(frame_prompts)
        device = self._execution_device
        use_cfg = guidance_scale > 1.0

        negative, positive = self._frame_embeddings(frame_prompts, negative_prompt)
        scheduler = self.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if t1 + 1 >= len(timesteps):
            raise ValueError(f"t1={t1} leaves no step for frame 1 alone: the scheduler has {len(timesteps)} steps")
        first, second, joint = timesteps[: -t1 - 1], timesteps[-t1 - 1 : -t0 - 1], timesteps[-t1 - 1 :]
        tracker = _Progress(progress, len(first) + (len(second) if num_frames > 1 else 0) + len(joint))

        factor = self.vae_scale_factor
        latent_shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        latents = _randn(latent_shape, generator, device, positive.dtype) * scheduler.init_noise_sigma

        state = FrameReference(index=0, cfg_groups=2 if use_cfg else 1)
        original_processors = self.unet.attn_processors
        install_rvm(self.unet, rvm_blocks, state)
        try:
            # Frame 1 alone, with its own (negative, positive) pair: a one-frame batch is its own reference.
            alone = _Pass(negative[:1], positive[:1], guidance_scale, generator, state, lambda step: 0, tracker)
            frame1_t1 = self._denoise(scheduler, latents, first, alone)
            joint_scheduler = copy.deepcopy(scheduler)
            if num_frames > 1:  # a single frame has no one to hand x_t0 to: its t1 -> t0 pass would be discarded
                frame1_t0 = self._denoise(scheduler, frame1_t1, second, alone)
                copies = frame1_t0.expand(num_frames - 1, -1, -1, -1)
                moved = translate_latents(copies, range(1, num_frames), motion_strength_x, motion_strength_y)
                t_from, t_to = int(timesteps[-t0 - 1]), int(timesteps[-t1 - 1])
                latents = torch.cat([frame1_t1, forward_diffuse(moved, scheduler.alphas, t_from, t_to, generator)])
            else:
                latents = frame1_t1

            def rotation(step: int) -> int:
                return rvm_reference_frame(step, num_frames, rvm_period)

            together = _Pass(negative, positive, guidance_scale, generator, state, rotation, tracker)
            latents = self._denoise(joint_scheduler, latents, joint, together)
        finally:
            self.unet.set_attn_processor(dict(original_processors))

        if output_type == "latent":
            return latents
        return self.decode(latents)

    def _check_inputs(
        self,
        frame_prompts: list[str],
        num_inference_steps: int,
        t0: int,
        t1: int,
        height: int,
        width: int,
        rvm_period: float,
        rvm_blocks: str,
        motion_strength_x: float,
        motion_strength_y: float,
        output_type: str,
    ) -> None:
        """Reject every bad argument before any model runs."""
        if not isinstance(frame_prompts, (list, tuple)) or not frame_prompts:
            raise ValueError("frame_prompts must be a non-empty list of strings")
        blank = [i for i, prompt in enumerate(frame_prompts) if not isinstance(prompt, str) or not prompt.strip()]
        if blank:
            raise ValueError(f"frame_prompts must be non-empty strings; bad frames (0-based): {blank}")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (num_inference_steps, t0, t1)):
            raise ValueError("num_inference_steps, t0 and t1 must be ints")
        if not 0 <= t0 < t1 < num_inference_steps:
            raise ValueError(f"need 0 <= t0 < t1 < num_inference_steps, got t0={t0}, t1={t1}, "
                             f"num_inference_steps={num_inference_steps}")
        factor = self.vae_scale_factor
        if height <= 0 or width <= 0 or height % factor or width % factor:
            raise ValueError(f"height and width must be positive multiples of {factor}, got {height}x{width}")
        rvm_reference_frame(0, len(frame_prompts), rvm_period)  # raises ValueError for a bad period
        if rvm_blocks not in ("up", "all"):
            raise ValueError(f"rvm_blocks must be 'up' or 'all', got {rvm_blocks!r}")
        if not (math.isfinite(motion_strength_x) and math.isfinite(motion_strength_y)):
            raise ValueError(f"motion strengths must be finite, got {motion_strength_x}, {motion_strength_y}")
        if output_type not in ("np", "latent"):
            raise ValueError(f"output_type must be 'np' or 'latent', got {output_type!r}")

    def _frame_embeddings(self, frame_prompts: list[str], negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative, positive) embeddings, ``(F, 77, dim)`` each; each distinct text is encoded once."""
        texts = list(dict.fromkeys([negative_prompt, *frame_prompts]))
        embeddings = self.encode_prompts(texts)
        row = {text: i for i, text in enumerate(texts)}
        positive = embeddings[[row[prompt] for prompt in frame_prompts]]
        negative = embeddings[[row[negative_prompt]] * len(frame_prompts)]
        return negative, positive

    def _denoise(
        self, scheduler: SchedulerMixin, latents: torch.Tensor, timesteps: torch.Tensor, run: _Pass
    ) -> torch.Tensor:
        """Run ``scheduler`` over ``timesteps`` on a batch of frames, setting the RVM reference before each step.

        With classifier-free guidance the UNet batch is [uncond frames 0..F-1, cond frames 0..F-1],
        the layout the RVM processor expects.
        """
        use_cfg = run.guidance_scale > 1.0
        context = torch.cat([run.negative, run.positive]) if use_cfg else run.positive
        accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
        step_kwargs = {"generator": run.generator} if accepts_generator else {}
        for i, t in enumerate(timesteps):
            run.state.index = run.reference(i)
            model_input = torch.cat([latents] * 2) if use_cfg else latents
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, encoder_hidden_states=context).sample
            if use_cfg:
                uncond, cond = noise.chunk(2)
                noise = uncond + run.guidance_scale * (cond - uncond)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            run.tracker.step()
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """VAE-decode latents to float32 frames ``(F, H, W, 3)`` in [0, 1]."""
        images = self.vae.decode((1 / self.vae.config.scaling_factor) * latents, return_dict=False)[0]
        images = (images / 2 + 0.5).clamp(0, 1)
        return images.permute(0, 2, 3, 1).float().cpu().numpy()
