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
   attend to a reference frame that changes every ``rvm_period`` steps (optionally with dual-softmax
   filtering, which lets unreliably matched queries keep their own frame's attention).

Any sampler of ``sampling.SCHEDULERS`` runs this schedule. A stochastic one (Euler ancestral, LCM) draws its
per-step noise from generators seeded by (seed, GLOBAL frame index, step), so that chunking never
changes a frame's noise; for a variance-exploding one (Euler) step 2 converts the latents to the
DDPM form and back with the sampler's sigmas.

``compile_unet`` puts the UNet, RVM/DSF processors included, through ``torch.compile``: the
per-step reference reaches the graph as tensors (``FrameReference``), so a render compiles once
per kind of UNet call and never per step or per reference frame.

Deliberate differences from diffusers: one prompt per frame; frame 1's first passes use frame 1's
own (negative, positive) pair (the authors' demo used two negatives there); the pipeline's
registered scheduler is not replaced by the copy after a call.

Cached-attention chunking (paper §4.3), when F exceeds ``batch_size`` B (see
:func:`direct2v.render.rvm.chunk_plan`): steps 1-2 run once for the whole video (motion by GLOBAL frame
index, one forward-process draw for all frames, so every frame starts the joint pass exactly as it
would unchunked). Step 3 runs first for the A = floor(B/2) anchor frames alone (RVM rotating over
the A anchors), which store their self-attention key/value at every (step, anchor) a later section
will use as its reference; then each section of at most A further frames runs step 3 from a fresh
copy of the same scheduler, as the virtual batch ``[anchors..., section...]``: at joint step t' its
reference is ``r(t')`` over that virtual batch, read from the cache when it is an anchor. No UNet
call holds more than A frames, and the cache does not grow with F.
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
import torch._dynamo
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, PNDMScheduler, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch._inductor.exc import InductorError
from transformers import CLIPTextModel, CLIPTokenizer

from direct2v.core.files import LORA_WEIGHTS
from direct2v.core.schedule import ScheduleError, resolve_schedule
from direct2v.render.attention import install_rvm
from direct2v.render.reference import AnchorKVCache, FrameReference
from direct2v.render.rvm import ChunkPlan, cached_anchor_steps, chunk_plan, reference_schedule, rvm_reference_frame
from direct2v.render.sampling import SCHEDULERS, draw_normal, forward_diffuse_with, step_kwargs

log = logging.getLogger(__name__)

#: Text2Video-Zero expresses motion in pixels of a 512 x 512 canvas, whatever the image size.
MOTION_CANVAS = 512

#: Most prompts per text-encoder call.
ENCODE_BATCH = 64

_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json")

#: Files each component subfolder must hold; one name of each inner tuple is enough.
REQUIRED_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "unet": (("config.json",), _DIFFUSERS_WEIGHTS),
    "vae": (("config.json",), _DIFFUSERS_WEIGHTS),
    "text_encoder": (("config.json",), ("model.safetensors", "model.safetensors.index.json")),
    "tokenizer": (("tokenizer.json", "vocab.json"), ("tokenizer.json", "merges.txt")),
    "scheduler": (("scheduler_config.json",),),
}


def missing_model_files(root: Path) -> list[str]:
    """The REQUIRED_FILES a local diffusers SD directory lacks (empty = complete)."""
    return [
        f"{component}/{' or '.join(names)}"
        for component, groups in REQUIRED_FILES.items()
        for names in groups
        if not any((Path(root) / component / name).is_file() for name in names)
    ]


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


def frame_faults(frames: np.ndarray) -> tuple[bool, list[int]]:
    """fp16's failure modes in decoded frames ``(F, H, W, 3)``: any NaN/inf value, and the 1-based
    frames that are entirely black (every value at most 1/255)."""
    black = [i + 1 for i, frame in enumerate(frames) if float(np.nan_to_num(frame).max()) <= 1.0 / 255.0]
    return bool(not np.isfinite(frames).all()), black


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
    reference: Callable[[int], int]  # step index within the segment -> reference frame (virtual batch)
    tracker: _Progress
    label: str  # names the segment in errors
    frame_ids: range  # the GLOBAL indices of the batch's frames (a stochastic sampler's noise keys)
    record_to: AnchorKVCache | None = None  # the anchor pass of a chunked render
    anchors: AnchorKVCache | None = None  # a section of a chunked render


class DirecT2VPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
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
        missing = missing_model_files(root)
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

    #: The compiled UNet (``compile_unet``); None: every call runs eagerly.
    compiled_unet: torch.nn.Module | None = None
    #: Why compilation was given up (None while it works, or was never asked for).
    compile_failure: str | None = None

    def compile_unet(self, backend: str = "inductor", mode: str | None = None) -> None:
        """Route the renders' UNet calls through ``torch.compile(unet, fullgraph=True)``.

        The RVM/DSF processors are part of the graph: they read the per-step reference from the
        tensors of :class:`direct2v.render.attention.FrameReference`, so after the first render has
        compiled each kind of call (frame 1 alone, the joint pass, a chunked render's anchor pass
        and sections) a render compiles nothing (tests/test_compile.py). ``fullgraph`` makes a graph
        break an error instead of a silent split; any compilation error makes this pipeline log the
        reason once and run eagerly from then on (``compile_failure``). The UNet itself stays
        uncompiled (``self.unet``), so hooks, processors and LoRA loading work on it as before.
        """
        # Every (processors, CFG, chunking) combination adds graphs; a comparison of several
        # variants in one process must not hit dynamo's default limit of 8 and fall back silently.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        self.compiled_unet = torch.compile(self.unet, fullgraph=True, backend=backend, mode=mode)
        self.compile_failure = None

    def _unet(self, *args, **kwargs):
        """One UNet evaluation: compiled when ``compile_unet`` was asked for and still works."""
        if self.compiled_unet is not None:
            try:
                return self.compiled_unet(*args, **kwargs)
            except (torch._dynamo.exc.RecompileError, torch._dynamo.exc.FailOnRecompileLimitHit):
                raise  # asked for by the caller (torch._dynamo.config): not a reason to fall back
            except (torch._dynamo.exc.TorchDynamoException, InductorError) as error:
                cause = getattr(error, "inner_exception", None) or error  # a backend's own error, if it raised one
                lines = str(cause).strip().splitlines() or [""]
                reason = f"{type(error).__name__}: {type(cause).__name__}: {lines[0]}"
                log.warning("torch.compile failed, the UNet runs eagerly from now on (%s)", reason)
                self.compiled_unet, self.compile_failure = None, reason
        return self.unet(*args, **kwargs)

    def fuse_local_lora(self, lora_dir: str | Path, scale: float = 1.0) -> None:
        """Fuse a LoRA from a local directory into the UNet (and text encoder, if it has one for it).

        The directory holds diffusers' ``pytorch_lora_weights.safetensors`` (what
        ``save_lora_weights`` writes, and how LCM-LoRA and most LoRAs ship); it is read offline,
        safetensors only, through diffusers' LoRA loading (peft), then fused with weight ``scale``
        and the adapter layers removed: the render runs on plain weights, at plain speed.

        Raises:
            FileNotFoundError: the directory or its weights file is missing.
        """
        root = Path(lora_dir)
        if not (root / LORA_WEIGHTS).is_file():
            raise FileNotFoundError(f"no LoRA at {root}: expected {root / LORA_WEIGHTS} (safetensors)")
        self.load_lora_weights(str(root), weight_name=LORA_WEIGHTS, use_safetensors=True, local_files_only=True)
        self.fuse_lora(lora_scale=scale)
        self.unload_lora_weights()  # keeps the fused weights, drops the peft layers
        log.info("fused LoRA %s with scale %s", root, scale)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings ``(len(prompts), 77, dim)``, ``ENCODE_BATCH`` prompts per encoder call.

        Batched so that a long video's text encoding does not grow the encoder's activations with F.

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
        ids = ids.to(self._execution_device)
        embeddings = torch.cat([self.text_encoder(part)[0] for part in ids.split(ENCODE_BATCH)])
        return embeddings.to(dtype=self.text_encoder.dtype)

    @torch.no_grad()
    def __call__(
        self,
        frame_prompts: list[str],
        negative_prompt: str = "",
        num_inference_steps: int = 100,
        guidance_scale: float = 12.0,
        t0: int | None = None,
        t1: int | None = None,
        height: int | None = None,
        width: int | None = None,
        rvm_period: float = 4,
        rvm_blocks: Literal["up", "all"] = "up",
        value_mapping: Literal["rotational", "random"] = "rotational",
        dsf: bool = True,
        dsf_quantile: float = 0.05,
        scheduler: Literal["pndm", "ddim", "dpmsolver++", "euler", "euler-ancestral", "lcm"] | None = None,
        batch_size: int = 8,
        motion_strength_x: float = 0.0,
        motion_strength_y: float = 0.0,
        generator: torch.Generator | None = None,
        reference_generator: torch.Generator | None = None,
        output_type: Literal["np", "latent"] = "np",
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Render one video, frame f from ``frame_prompts[f]``.

        Args:
            frame_prompts: one description per frame (F >= 1).
            negative_prompt: shared by all frames (classifier-free guidance's unconditional text).
            num_inference_steps, guidance_scale: as in Stable Diffusion; guidance > 1 enables CFG.
            t0, t1: Text2Video-Zero's steps counted from the end, ``0 <= t0 < t1 <= num_inference_steps - 2``;
                the last ``t1 + 1`` scheduler steps are denoised jointly. None: 90% and 95% of the
                steps (90 and 95 of 100; :func:`direct2v.core.schedule.resolve_schedule`).
            height, width: pixels, multiples of the VAE scale factor; default the model's native size.
            rvm_period: the RVM period m in steps; ``math.inf`` keeps frame 0 as the reference
                (Text2Video-Zero).
            rvm_blocks: ``"up"`` (up_blocks.2/.3 self-attention, the authors' choice) or ``"all"``.
            value_mapping: ``"rotational"`` (RVM) or ``"random"`` (the paper's ablation: a random
                reference every joint step, drawn from ``reference_generator``; ``rvm_period`` unused).
            dsf: dual-softmax filtering (paper Eq. 3-4) on the RVM layers.
            dsf_quantile: phi, the quantile of each layer call's confidences below which (inclusive)
                a query keeps its own frame's attention; see ``DualSoftmaxFilterProcessor``.
            scheduler: ``"pndm"`` (the paper's), ``"ddim"``, ``"dpmsolver++"``, ``"euler"``,
                ``"euler-ancestral"`` or ``"lcm"``, built from the registered scheduler's config;
                None uses the registered scheduler itself. A stochastic sampler's noise at each step
                is drawn per frame from (seed of ``generator``, global frame index, step).
            batch_size: B, the most frames one UNet call may hold (per CFG half); longer videos are
                rendered with cached-attention chunking (module docstring). F <= B renders in one batch.
            motion_strength_x, motion_strength_y: Text2Video-Zero's global translation per frame,
                in pixels of a 512-px canvas.
            generator: the source of the latent randomness (initial noise, then the forward-process
                noise); the same seed gives the same video.
            reference_generator: the random ablation's own generator (required for it; kept apart
                so that the ablation does not change the noise).
            output_type: ``"np"``: float32 frames ``(F, H, W, 3)`` in [0, 1]; ``"latent"``: the
                final latents ``(F, 4, H/8, W/8)``.
            progress: called as ``progress(done, total)`` after every UNet evaluation.

        Raises:
            ValueError: for any bad argument, before a model runs.
            FloatingPointError: the latents became NaN/inf (typically an fp16 overflow).
        """
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        if t0 is None or t1 is None:
            try:
                window = resolve_schedule(num_inference_steps, t0=t0, t1=t1)
            except ScheduleError as error:
                raise ValueError(str(error)) from None
            t0, t1 = window.t0, window.t1
        self._check_inputs(
            frame_prompts, num_inference_steps, t0, t1, height, width, rvm_period, rvm_blocks,
            motion_strength_x, motion_strength_y, output_type, value_mapping, dsf, dsf_quantile,
            scheduler, batch_size, reference_generator,
        )
        num_frames = len(frame_prompts)
        device = self._execution_device
        use_cfg = guidance_scale > 1.0
        plan = chunk_plan(num_frames, batch_size)

        negative, positive = self._frame_embeddings(frame_prompts, negative_prompt)
        scheduler = self.make_scheduler(scheduler)
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        if t1 + 1 >= len(timesteps):
            raise ValueError(f"t1={t1} leaves no step for frame 1 alone: the scheduler has {len(timesteps)} steps")
        first, second, joint = timesteps[: -t1 - 1], timesteps[-t1 - 1 : -t0 - 1], timesteps[-t1 - 1 :]
        joint_passes = 1 + len(plan.sections)
        tracker = _Progress(progress, len(first) + (len(second) if num_frames > 1 else 0) + len(joint) * joint_passes)

        # Every pass's reference schedule, fixed before any UNet call (the cache must know what to keep).
        anchor_size = plan.num_anchors
        schedules = [
            reference_schedule(len(joint), size, value_mapping, rvm_period, reference_generator)
            for size in [anchor_size, *(anchor_size + len(section) for section in plan.sections)]
        ]

        factor = self.vae_scale_factor
        latent_shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        latents = draw_normal(latent_shape, generator, device, positive.dtype) * scheduler.init_noise_sigma

        state = FrameReference(index=0, cfg_groups=2 if use_cfg else 1, device=device)
        original_processors = self.unet.attn_processors
        install_rvm(self.unet, rvm_blocks, state, dsf_quantile if dsf else None)
        try:
            # Frame 1 alone, with its own (negative, positive) pair: a one-frame batch is its own reference.
            alone = _Pass(negative[:1], positive[:1], guidance_scale, generator, state, lambda step: 0, tracker,
                          "frame 1 alone", range(1))
            frame1_t1 = self._denoise(scheduler, latents, first, alone)
            joint_scheduler = copy.deepcopy(scheduler)
            if num_frames > 1:  # a single frame has no one to hand x_t0 to: its t1 -> t0 pass would be discarded
                frame1_t0 = self._denoise(scheduler, frame1_t1, second, alone)
                copies = frame1_t0.expand(num_frames - 1, -1, -1, -1)
                moved = translate_latents(copies, range(1, num_frames), motion_strength_x, motion_strength_y)
                index_from, index_to = len(timesteps) - t0 - 1, len(timesteps) - t1 - 1
                pushed_back = forward_diffuse_with(scheduler, moved, index_from, index_to, generator)
                latents = torch.cat([frame1_t1, pushed_back])
            else:
                latents = frame1_t1

            def joint_pass(frames: range, schedule: list[int], label: str, **cache) -> _Pass:
                return _Pass(negative[frames.start : frames.stop], positive[frames.start : frames.stop],
                             guidance_scale, generator, state, schedule.__getitem__, tracker, label, frames, **cache)

            latents = self._denoise_joint(joint_scheduler, latents, joint, plan, schedules, joint_pass)
        finally:
            self.unet.set_attn_processor(dict(original_processors))

        if output_type == "latent":
            return latents
        return self.decode(latents, batch_size)

    def _denoise_joint(
        self,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        plan: ChunkPlan,
        schedules: list[list[int]],
        joint_pass: Callable[..., _Pass],
    ) -> torch.Tensor:
        """Step 3 for all frames: one batch, or the anchors then each section against the anchor cache.

        ``schedules[0]`` is the anchors' reference schedule, ``schedules[1 + s]`` section s's (over
        its virtual batch). Every pass starts from ``scheduler`` as it stands at t1 (a fresh copy
        each when chunked), so a section is denoised exactly like the first batch.
        """
        anchors = plan.anchors
        if not plan.sections:  # F <= B: the non-chunked render
            return self._denoise(scheduler, latents, timesteps, joint_pass(anchors, schedules[0], "joint pass"))

        cache = AnchorKVCache(cached_anchor_steps(schedules[1:], plan.num_anchors), plan.num_anchors)
        label = f"anchors (frames 1-{anchors.stop}) of a chunked render"
        run = joint_pass(anchors, schedules[0], label, record_to=cache)
        done = [self._denoise(copy.deepcopy(scheduler), latents[anchors.start : anchors.stop], timesteps, run)]
        cache.check_complete()
        log.info("anchor cache: %d entries for %d (step, anchor) pairs, %.2f MiB; %d sections",
                 len(cache), len(cache.wanted), cache.nbytes / 2**20, len(plan.sections))
        for section, schedule in zip(plan.sections, schedules[1:]):
            label = f"section of frames {section.start + 1}-{section.stop}"
            run = joint_pass(section, schedule, label, anchors=cache)
            done.append(self._denoise(copy.deepcopy(scheduler), latents[section.start : section.stop], timesteps, run))
        return torch.cat(done)

    def make_scheduler(self, name: str | None) -> SchedulerMixin:
        """The registered scheduler (None), or a fresh named one built from the registered one's config.

        Building from the model's own config keeps its training noise schedule (betas, offsets),
        which every sampler must share; keys a class does not take (PNDM's ``skip_prk_steps`` for
        DDIM) are dropped rather than passed on.
        """
        if name is None:
            return self.scheduler
        cls, overrides = SCHEDULERS[name]
        accepted = inspect.signature(cls.__init__).parameters
        config = {key: value for key, value in self.scheduler.config.items() if key in accepted}
        return cls.from_config({**config, **overrides})

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
        value_mapping: str,
        dsf: bool,
        dsf_quantile: float,
        scheduler: str | None,
        batch_size: int,
        reference_generator: torch.Generator | None,
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
        if value_mapping not in ("rotational", "random"):
            raise ValueError(f"value_mapping must be 'rotational' or 'random', got {value_mapping!r}")
        if value_mapping == "random" and not isinstance(reference_generator, torch.Generator):
            raise ValueError("value_mapping='random' needs a reference_generator (a torch.Generator of its own)")
        if not isinstance(dsf, bool):
            raise ValueError(f"dsf must be a bool, got {dsf!r}")
        if isinstance(dsf_quantile, bool) or not isinstance(dsf_quantile, (int, float)) or not 0 <= dsf_quantile < 1:
            raise ValueError(f"dsf_quantile must be in [0, 1), got {dsf_quantile!r}")
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {sorted(SCHEDULERS)} or None, got {scheduler!r}")
        chunk_plan(len(frame_prompts), batch_size)  # raises ValueError for a bad batch size

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
        the layout the RVM processor expects. Latents that come out NaN/inf raise at once, naming
        the segment, instead of being decoded into garbage (or black) frames.
        """
        use_cfg = run.guidance_scale > 1.0
        context = torch.cat([run.negative, run.positive]) if use_cfg else run.positive
        seed = run.generator.initial_seed() if run.generator is not None else None
        run.state.record_to, run.state.anchors = run.record_to, run.anchors
        try:
            # the timesteps' host copy, read once per pass: a stochastic sampler keys its noise on
            # them, and reading a device tensor's value at every step would be a sync each time
            for i, (t, t_host) in enumerate(zip(timesteps, timesteps.tolist())):
                run.state.point_to(run.reference(i), i)
                model_input = torch.cat([latents] * 2) if use_cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                noise = self._unet(model_input, t, encoder_hidden_states=context).sample
                if use_cfg:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + run.guidance_scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents, **step_kwargs(scheduler, seed, run.frame_ids, t_host)).prev_sample
                run.tracker.step()
        finally:
            run.state.record_to = run.state.anchors = None
        if not torch.isfinite(latents).all():
            raise FloatingPointError(
                f"the latents became NaN/inf during {run.label} (dtype {latents.dtype}); "
                "fp16 overflows do this: use bfloat16 or float32"
            )
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """VAE-decode latents to float32 frames ``(F, H, W, 3)`` in [0, 1], ``batch_size`` frames per call.

        The decoder's activations at full resolution are what peaks a long video's memory, so
        they are bounded like the UNet's (frames are decoded independently: the same pixels).
        None decodes all frames in one call.
        """
        scaled = (1 / self.vae.config.scaling_factor) * latents
        parts = scaled.split(batch_size or len(scaled))
        frames = [self.vae.decode(part, return_dict=False)[0].div(2).add(0.5).clamp(0, 1) for part in parts]
        return torch.cat(frames).permute(0, 2, 3, 1).float().cpu().numpy()
