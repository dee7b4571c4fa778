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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch._inductor.exc import InductorError
from transformers import CLIPTextModel, CLIPTokenizer

from direct2v.core.files import LORA_WEIGHTS
from direct2v.render.attention import install_rvm
from direct2v.render.call import RenderCall
from direct2v.render.conditioning import TextConditioning
from direct2v.render.latent_schedule import Segments, translate_latents
from direct2v.render.model_dir import SD, Architecture, ModelDirError, load_components
from direct2v.render.passes import DenoisePass, Progress
from direct2v.render.reference import AnchorKVCache, FrameReference
from direct2v.render.rvm import ChunkPlan, cached_anchor_steps, chunk_plan, reference_schedule
from direct2v.render.sampling import SCHEDULERS, draw_normal, forward_diffuse_with, step_kwargs

log = logging.getLogger(__name__)

#: Most prompts per text-encoder call.
ENCODE_BATCH = 64


def frame_faults(frames: np.ndarray) -> tuple[bool, list[int]]:
    """fp16's failure modes in decoded frames ``(F, H, W, 3)``: any NaN/inf value, and the 1-based
    frames that are entirely black (every value at most 1/255)."""
    black = [i + 1 for i, frame in enumerate(frames) if float(np.nan_to_num(frame).max()) <= 1.0 / 255.0]
    return bool(not np.isfinite(frames).all()), black


class DirecT2VPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Stable Diffusion 1.x/2.x turned into a video renderer: one prompt per frame, RVM self-attention.

    The SDXL pipeline (:mod:`direct2v.render.pipeline_xl`) is this one with its own text conditioning
    and VAE decode; the latent schedule, attention and chunking are shared.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    #: The model family this class renders (``model_index.json``'s class, :mod:`direct2v.render.model_dir`).
    architecture: Architecture = SD

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
        """Load a local diffusers directory of this class's architecture, offline and safetensors only
        (:func:`direct2v.render.renderer.load_pipeline` picks the class a directory needs).

        Raises:
            FileNotFoundError: the directory, a component subfolder or a required file is missing
                (the message lists every missing item; :func:`direct2v.render.model_dir.load_components`).
            ModelDirError: the directory is another architecture, or none this renderer runs.
        """
        architecture, components = load_components(path, torch_dtype)
        if architecture is not cls.architecture:
            raise ModelDirError(f"{path} is a {architecture.label} model; {cls.__name__} renders "
                                f"{cls.architecture.label}")
        return cls(**components).to(device)

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
        call: RenderCall | None = None,
        *,
        generator: torch.Generator | None = None,
        reference_generator: torch.Generator | None = None,
        progress: Callable[[int, int], None] | None = None,
        **changes: Any,
    ) -> np.ndarray | torch.Tensor:
        """Render one video, frame f from ``frame_prompts[f]`` (F >= 1), as ``call`` says.

        Args:
            frame_prompts: one description per frame.
            call: everything else the render decides (:class:`~direct2v.render.call.RenderCall`);
                None: RenderCall's defaults.
            generator: the source of the latent randomness (initial noise, then the forward-process
                noise); the same seed gives the same video.
            reference_generator: the random ablation's own generator (required for it; kept apart
                so that the ablation does not change the noise).
            progress: called as ``progress(done, total)`` after every UNet evaluation.
            **changes: RenderCall fields by name, over ``call``: ``pipe(prompts, num_inference_steps=20)``
                is ``pipe(prompts, RenderCall(num_inference_steps=20))``.

        Returns:
            ``call.output_type`` "np": float32 frames ``(F, H, W, 3)`` in [0, 1]; "latent": the final
            latents ``(F, 4, H/8, W/8)``.

        Raises:
            TypeError: ``call`` is not a RenderCall, or a change names no RenderCall field.
            ValueError: for any bad argument, before a model runs (:meth:`RenderCall.check`).
            FloatingPointError: the latents became NaN/inf (typically an fp16 overflow).
        """
        if call is not None and not isinstance(call, RenderCall):
            raise TypeError(f"call must be a RenderCall, got {type(call).__name__}: {call!r}")
        call = (RenderCall() if call is None else call).replace(**changes)
        call = call.resolved(native_size=self.unet.config.sample_size * self.vae_scale_factor)
        call.check(frame_prompts, self.vae_scale_factor, reference_generator)
        num_frames = len(frame_prompts)
        device = self._execution_device
        guidance_scale = call.guidance_scale
        use_cfg = guidance_scale > 1.0
        plan = chunk_plan(num_frames, call.batch_size)

        negative, positive = self._frame_conditioning(frame_prompts, call)
        scheduler = self.make_scheduler(call.scheduler)
        scheduler.set_timesteps(call.num_inference_steps, device=device)
        segments = Segments.split(scheduler.timesteps, call.t0, call.t1)
        tracker = Progress(progress, segments.unet_evaluations(num_frames, joint_passes=1 + len(plan.sections)))

        # Every pass's reference schedule, fixed before any UNet call (the cache must know what to keep).
        anchor_size = plan.num_anchors
        schedules = [
            reference_schedule(len(segments.joint), size, call.value_mapping, call.rvm_period, reference_generator)
            for size in [anchor_size, *(anchor_size + len(section) for section in plan.sections)]
        ]

        factor = self.vae_scale_factor
        latent_shape = (1, self.unet.config.in_channels, call.height // factor, call.width // factor)
        latents = draw_normal(latent_shape, generator, device, positive.dtype) * scheduler.init_noise_sigma

        state = FrameReference(index=0, cfg_groups=2 if use_cfg else 1, device=device)
        original_processors = self.unet.attn_processors
        install_rvm(self.unet, call.rvm_blocks, state, call.dsf_quantile if call.dsf else None)
        try:
            # Frame 1 alone, with its own (negative, positive) pair: a one-frame batch is its own reference.
            alone = DenoisePass(negative[:1], positive[:1], guidance_scale, generator, state, lambda step: 0,
                                tracker, "frame 1 alone", range(1))
            frame1_t1 = self._denoise(scheduler, latents, segments.first, alone)
            joint_scheduler = copy.deepcopy(scheduler)
            if num_frames > 1:  # a single frame has no one to hand x_t0 to: its t1 -> t0 pass would be discarded
                frame1_t0 = self._denoise(scheduler, frame1_t1, segments.second, alone)
                copies = frame1_t0.expand(num_frames - 1, -1, -1, -1)
                moved = translate_latents(copies, range(1, num_frames), call.motion_strength_x, call.motion_strength_y)
                pushed_back = forward_diffuse_with(scheduler, moved, segments.t0_index, segments.t1_index, generator)
                latents = torch.cat([frame1_t1, pushed_back])
            else:
                latents = frame1_t1

            def joint_pass(frames: range, schedule: list[int], label: str, **cache) -> DenoisePass:
                rows = slice(frames.start, frames.stop)
                return DenoisePass(negative[rows], positive[rows], guidance_scale, generator, state,
                                   schedule.__getitem__, tracker, label, frames, **cache)

            latents = self._denoise_joint(joint_scheduler, latents, segments.joint, plan, schedules, joint_pass)
        finally:
            self.unet.set_attn_processor(dict(original_processors))

        if call.output_type == "latent":
            return latents
        return self.decode(latents, call.batch_size)

    def _denoise_joint(
        self,
        scheduler: SchedulerMixin,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        plan: ChunkPlan,
        schedules: list[list[int]],
        joint_pass: Callable[..., DenoisePass],
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
        # A latent model's x0 is never clipped to the pixel range (SD's configs say clip_sample false).
        # A config without the key (a PNDMScheduler built in code does not keep it) would get DDIM's
        # pixel-space default, and clipping unit-variance latents to [-1, 1] erases the picture.
        given = {"clip_sample": False, **self.scheduler.config}
        config = {key: value for key, value in given.items() if key in accepted}
        return cls.from_config({**config, **overrides})

    def _frame_conditioning(
        self, frame_prompts: list[str], call: RenderCall
    ) -> tuple[TextConditioning, TextConditioning]:
        """(negative, positive) conditioning, F rows each; each distinct text is encoded once."""
        texts = list(dict.fromkeys([call.negative_prompt, *frame_prompts]))
        embeddings = TextConditioning(self.encode_prompts(texts))
        row = {text: i for i, text in enumerate(texts)}
        positive = embeddings[[row[prompt] for prompt in frame_prompts]]
        negative = embeddings[[row[call.negative_prompt]] * len(frame_prompts)]
        return negative, positive

    def _denoise(
        self, scheduler: SchedulerMixin, latents: torch.Tensor, timesteps: torch.Tensor, run: DenoisePass
    ) -> torch.Tensor:
        """Run ``scheduler`` over ``timesteps`` on a batch of frames, setting the RVM reference before each step.

        With classifier-free guidance the UNet batch is [uncond frames 0..F-1, cond frames 0..F-1],
        the layout the RVM processor expects. Latents that come out NaN/inf raise at once, naming
        the segment, instead of being decoded into garbage (or black) frames.
        """
        use_cfg = run.guidance_scale > 1.0
        context = TextConditioning.cat([run.negative, run.positive]) if use_cfg else run.positive
        seed = run.generator.initial_seed() if run.generator is not None else None
        run.state.record_to, run.state.anchors = run.record_to, run.anchors
        try:
            # the timesteps' host copy, read once per pass: a stochastic sampler keys its noise on
            # them, and reading a device tensor's value at every step would be a sync each time
            for i, (t, t_host) in enumerate(zip(timesteps, timesteps.tolist())):
                run.state.point_to(run.reference(i), i)
                model_input = torch.cat([latents] * 2) if use_cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                noise = self._unet(model_input, t, **context.unet_kwargs()).sample
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
