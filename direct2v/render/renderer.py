"""The render stage: a validated FramePlan -> frames, on a pipeline loaded once per process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from direct2v.core.config import RenderSettings
from direct2v.core.errors import Direct2VError
from direct2v.core.files import render_model_id
from direct2v.director.plan import FramePlan
from direct2v.render.call import RenderCall
from direct2v.render.model_dir import check_model_dir
from direct2v.render.pipeline import DirecT2VPipeline, frame_faults
from direct2v.render.pipeline_xl import DirecT2VXLPipeline

log = logging.getLogger(__name__)

#: The random-VM ablation's generator is seeded with the plan's seed plus this (the noise uses the seed).
REFERENCE_SEED_OFFSET = 1

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class RenderError(Direct2VError, RuntimeError):
    """A video could not be rendered (bad output, or the model failed)."""


def resolve_device(settings: RenderSettings) -> tuple[torch.device, torch.dtype]:
    """'auto' picks CUDA when present; 'auto' dtype is fp16 on CUDA and fp32 on CPU."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise RenderError("render.device is 'cuda' but no CUDA GPU is available (set render.device=cpu or auto)")
    if settings.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(settings.device)
    if settings.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[settings.dtype]
    return device, dtype


#: The pipeline class of each architecture (``direct2v.render.model_dir``).
PIPELINES: dict[str, type[DirecT2VPipeline]] = {cls.architecture.name: cls for cls in (DirecT2VPipeline, DirecT2VXLPipeline)}


def load_pipeline(
    model_dir: str | Path, torch_dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> DirecT2VPipeline:
    """The pipeline of the architecture ``model_dir``'s ``model_index.json`` names, loaded offline.

    Raises:
        FileNotFoundError: the directory or a required file is missing (all named).
        direct2v.render.model_dir.ModelDirError: a pipeline class this renderer does not run.
    """
    architecture = check_model_dir(Path(model_dir))
    return PIPELINES[architecture.name].from_local_dir(model_dir, torch_dtype=torch_dtype, device=device)


class Renderer:
    """Holds one loaded pipeline; ``render`` may be called for many plans."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self.device, self.dtype = resolve_device(settings)
        self.model_id = render_model_id(settings.model_dir, settings.lora_dir)
        self.pipeline = load_pipeline(settings.model_dir, torch_dtype=self.dtype, device=self.device)
        self.architecture = self.pipeline.architecture.name
        if settings.lora_dir is not None:
            self.pipeline.fuse_local_lora(settings.lora_dir, settings.lora_scale)
        on_gpu = self.device.type == "cuda"
        if settings.channels_last is True or (settings.channels_last == "auto" and on_gpu):
            self.pipeline.unet.to(memory_format=torch.channels_last)
        if settings.compile is True or (settings.compile == "auto" and on_gpu):
            self.pipeline.compile_unet()  # compiles at the first render; a failure is logged, then eager

    def render(
        self, plan: FramePlan, progress: Callable[[int, int], None] | None = None, batch_size: int | None = None
    ) -> np.ndarray:
        """Render a plan to (F, H, W, 3) floats in [0, 1]; raise RenderError on NaN or blank output.

        Randomness comes from the plan's seed only: one CPU generator for the latent noise (so the
        same seed gives the same video on any device) and, for the random-VM ablation, a second
        generator seeded ``seed + REFERENCE_SEED_OFFSET`` so that its draws are not the noise's.
        """
        s = self.settings
        # batch_size overrides render.batch_size (videos.render_with_oom_retry halves it)
        batch_size = s.batch_size if batch_size is None else batch_size
        generator = torch.Generator(device="cpu").manual_seed(plan.seed)
        reference_generator = torch.Generator(device="cpu").manual_seed(plan.seed + REFERENCE_SEED_OFFSET)
        try:
            frames = self.pipeline(
                frame_prompts=plan.frames,
                call=RenderCall.from_settings(s),
                batch_size=batch_size,
                generator=generator,
                reference_generator=reference_generator,
                output_type="np",
                progress=progress,
            )
        except FloatingPointError as error:  # NaN/inf latents, caught before decoding
            raise RenderError(f"{plan.prompt_id}: {error}") from error
        check_frames(frames, plan.prompt_id)
        return frames


def check_frames(frames: np.ndarray, prompt_id: str) -> None:
    """fp16 safety: NaN/inf or all-black frames fail the video instead of becoming an MP4."""
    not_finite, black = frame_faults(frames)
    if not_finite:
        raise RenderError(f"{prompt_id}: the renderer produced NaN/inf values (try render.dtype=float32 or bfloat16)")
    if black:
        raise RenderError(f"{prompt_id}: frames {black} are completely black (often an fp16 overflow)")


@lru_cache(maxsize=1)
def cached_renderer(settings: RenderSettings) -> Renderer:
    """One loaded pipeline per process and settings: tasks reuse it instead of reloading."""
    return Renderer(settings)
