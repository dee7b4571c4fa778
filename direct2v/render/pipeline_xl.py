"""DirecT2VXLPipeline: the same video renderer on Stable Diffusion XL.

What differs from SD 1.x/2.x (:class:`direct2v.render.pipeline.DirecT2VPipeline`), each as diffusers'
``StableDiffusionXLPipeline`` and ``TextToVideoZeroSDXLPipeline`` do it (tests/test_sdxl.py checks the
second):

- **two text encoders**: each frame prompt goes through both; the UNet's context is their
  penultimate hidden states side by side, and the second encoder's pooled (projected) output is a
  per-frame ``text_embeds``;
- **size conditioning**: per frame, ``time_ids`` = (height, width) original size, crop corner (0, 0),
  (height, width) target size;
- **negative prompt**: an empty one is all zeros (hidden and pooled) when the model says
  ``force_zeros_for_empty_prompt``, as SDXL's pipelines do without a negative prompt;
- **VAE**: an fp16 VAE whose config says ``force_upcast`` decodes in float32 (SDXL's VAE overflows
  in fp16), then goes back to fp16.

The latent schedule, RVM/DSF attention (on the blocks ``rvm_blocks="up"`` picks for this UNet:
up_blocks.0/.1), cached-attention chunking, samplers and LoRA fusing are the base class's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders import StableDiffusionXLLoraLoaderMixin
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from direct2v.render.call import RenderCall
from direct2v.render.conditioning import TextConditioning
from direct2v.render.model_dir import SDXL, Architecture
from direct2v.render.pipeline import ENCODE_BATCH, DirecT2VPipeline, log


# The LoRA mixin comes first so that its loader (both text encoders, SDXL's key names) is the one used.
class DirecT2VXLPipeline(StableDiffusionXLLoraLoaderMixin, DirecT2VPipeline):
    """Stable Diffusion XL turned into a video renderer: one prompt per frame, RVM self-attention."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    architecture: Architecture = SDXL

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        force_zeros_for_empty_prompt: bool = True,
    ):
        DirecT2VPipeline.__init__(self, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                  scheduler=scheduler)
        self.register_modules(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

    @torch.no_grad()
    def encode_prompts_xl(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(hidden, pooled)`` of ``prompts``: both encoders' penultimate hidden states concatenated
        ``(len, 77, dim1 + dim2)`` and the second encoder's projected pooled output ``(len, projection_dim)``,
        ``ENCODE_BATCH`` prompts per encoder call. Truncated prompts are logged, as the SD 1.x path does."""
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            limit = tokenizer.model_max_length
            for prompt, ids in zip(prompts, tokenizer(list(prompts)).input_ids):
                if len(ids) > limit:
                    log.warning("prompt truncated to %d of its %d CLIP tokens: %r", limit, len(ids), prompt)
            ids = tokenizer(list(prompts), padding="max_length", max_length=limit, truncation=True,
                            return_tensors="pt").input_ids.to(self._execution_device)
            outputs = [encoder(part, output_hidden_states=True) for part in ids.split(ENCODE_BATCH)]
            hidden.append(torch.cat([output.hidden_states[-2] for output in outputs]))
            pooled = torch.cat([output[0] for output in outputs])  # the last encoder's projected pooled output
        dtype = self.text_encoder_2.dtype
        return torch.cat(hidden, dim=-1).to(dtype), pooled.to(dtype)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """The UNet context of ``prompts``: :meth:`encode_prompts_xl`'s hidden states."""
        return self.encode_prompts_xl(prompts)[0]

    def _frame_conditioning(
        self, frame_prompts: list[str], call: RenderCall
    ) -> tuple[TextConditioning, TextConditioning]:
        """(negative, positive) SDXL conditioning, F rows each; each distinct text is encoded once."""
        zero_negative = not call.negative_prompt and self.config.force_zeros_for_empty_prompt
        texts = list(dict.fromkeys(([] if zero_negative else [call.negative_prompt]) + list(frame_prompts)))
        hidden, pooled = self.encode_prompts_xl(texts)
        size = (call.height, call.width)
        time_ids = torch.tensor([size + (0, 0) + size], dtype=hidden.dtype, device=hidden.device)
        encoded = TextConditioning(hidden, pooled, time_ids.expand(len(texts), -1))
        row = {text: i for i, text in enumerate(texts)}
        positive = encoded[[row[prompt] for prompt in frame_prompts]]
        if zero_negative:
            first = encoded[[0] * len(frame_prompts)]
            negative = TextConditioning(torch.zeros_like(first.hidden), torch.zeros_like(first.pooled), first.time_ids)
        else:
            negative = encoded[[row[call.negative_prompt]] * len(frame_prompts)]
        return negative, positive

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
        """The base decode, in float32 when the VAE is fp16 and its config says ``force_upcast``."""
        upcast = self.vae.dtype == torch.float16 and bool(getattr(self.vae.config, "force_upcast", False))
        if not upcast:
            return super().decode(latents, batch_size)
        self.vae.to(torch.float32)
        try:
            return super().decode(latents.float(), batch_size)
        finally:
            self.vae.to(torch.float16)
