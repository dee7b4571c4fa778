"""A tiny random-weight CLIP in the Hugging Face layout, built offline in a second or two.

It exists so that ``direct2v eval`` and its tests run the real loading path (``CLIPModel``,
``CLIPTokenizer`` and ``CLIPImageProcessorPil`` from a local directory, safetensors only) without
downloading anything. The tokenizer is the same CLIP-style BPE the tiny SD uses
(``tiny_models.build_clip_tokenizer``); the weights are random, so its scores are meaningless
numbers near 0. Point ``eval.clip_model_dir`` at a real CLIP directory (for example
``openai/clip-vit-large-patch14`` saved locally) for scores comparable with the paper's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from direct2v.bundled.tiny_models import build_clip_tokenizer, tiny_text_config
from direct2v.core.files import staged_directory

IMAGE_SIZE = 32


def build_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Build the tiny CLIP into ``path`` (replacing it) and return ``path``; same seed, same files."""
    path = Path(path)
    with staged_directory(path) as staging:
        tokenizer = build_clip_tokenizer(staging)
        config = CLIPConfig(
            text_config=tiny_text_config(tokenizer),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=IMAGE_SIZE,
                patch_size=8,
            ),
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config).eval()
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        ).save_pretrained(staging)
    return path
