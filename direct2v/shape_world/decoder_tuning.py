"""Fine-tune a trained shape-world model's decoder to draw crisp shapes from a sampler's latents.

    python -m direct2v models tune-decoder --model-dir DIR --out OUT

The autoencoder is trained to decode the encoder's posterior means; the UNet's samples are near
those, not at them, and a decoder that has only seen exact means draws a square whose latent is a
little off with rounded corners, which is no longer a square (measured in docs/shape-world.md).
This fine-tunes the decoder alone on posterior means plus Gaussian noise of a random size up to
``latent_noise`` (in the UNet's unit-variance latent units), with the clean image as the target: the
noise augmentation cascaded diffusion models give a later stage's input (Ho et al. 2022), applied to
the decoder, which Stable Diffusion's own fine-tuned decoders (ft-MSE) also changed alone. The
encoder, and so the latent space the UNet was trained in, is untouched: the UNet, text encoder and
the rest of the model directory are copied unchanged.

Resumable as ``train-shapes`` is (the loop and resume rule of :mod:`direct2v.core.training`): every
step's randomness comes from ``(seed, step)``, and a checkpoint continues only the same settings on
the same model.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from direct2v.core.config import training_record
from direct2v.core.errors import Direct2VError
from direct2v.core.files import directory_hash, staged_directory, write_atomically
from direct2v.core.training import CHECKPOINT, git_commit, learning_rate, load_checkpoint, run_steps, save_checkpoint
from direct2v.shape_world.training import images_tensor, object_mask, reconstruction_loss, training_scenes


class DecoderTuneConfig(BaseModel):
    """Everything a decoder-tuning run depends on; recorded beside the weights."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    data_seed: int = 0
    num_images: int = Field(8000, ge=64, description="fixed training scenes, encoded once")
    two_object_rate: float = 0.4
    steps: int = Field(2000, ge=1)
    batch: int = 32
    lr: float = Field(2e-4, gt=0, description="peak learning rate (a fifth of the autoencoder's: a fine-tune)")
    warmup: int = 50
    latent_noise: float = Field(
        1.0, ge=0.0, description="the largest noise std added to a latent, in the UNet's unit-variance units "
        "(each example draws its std uniformly below it); chosen on the dev storylines, 0.5 / 1.0 / 2.0 tried")
    object_weight: float = Field(4.0, ge=0.0, description="extra loss weight on object pixels, as in train-shapes")
    checkpoint_every: int = 250
    threads: int | None = None

    #: Settings that do not change what the steps compute: a checkpoint resumes whatever they are.
    OUTPUT_ONLY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "threads"})

    def training_settings(self) -> dict:
        return self.model_dump(exclude=set(self.OUTPUT_ONLY))


class DecoderTuningError(Direct2VError, ValueError):
    """A model this command will not tune (the message says which to give instead)."""


class DecoderTuner:
    """The model's autoencoder, its training scenes' posterior means and the decoder's optimiser."""

    def __init__(self, config: DecoderTuneConfig, model_dir: Path, work_dir: Path):
        from diffusers import AutoencoderKL

        self.config, self.model_dir, self.work_dir = config, Path(model_dir), Path(work_dir)
        if not (self.model_dir / "vae").is_dir():
            raise FileNotFoundError(f"{self.model_dir} is not a shape-world model directory (no vae/ in it)")
        if "decoder_tuning" in training_record(self.model_dir):
            raise DecoderTuningError(f"{self.model_dir}'s decoder is already tuned (its TRAINING.json says so): "
                                    "give the train-shapes model it was tuned from")
        self.vae = AutoencoderKL.from_pretrained(self.model_dir, subfolder="vae", local_files_only=True,
                                                 use_safetensors=True)
        self.model_hash = directory_hash(self.model_dir / "vae")
        self.work_dir.mkdir(parents=True, exist_ok=True)
        scenes = training_scenes(config.num_images, config.data_seed, config.two_object_rate)
        self.images = images_tensor(scenes)
        self.object_mask = object_mask(scenes, self.images)
        self.vae.requires_grad_(False).eval()
        with torch.no_grad():
            self.means = torch.cat([self.vae.encode(chunk.float() / 127.5 - 1.0).latent_dist.mean
                                    for chunk in self.images.split(256)])
        self.parameters = [*self.vae.decoder.parameters(), *self.vae.post_quant_conv.parameters()]
        for parameter in self.parameters:
            parameter.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=config.lr, weight_decay=0.0)
        self.next_step = 0
        self.losses: list[tuple[int, float]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / CHECKPOINT

    def save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, {
            "config": self.config.training_settings(), "model_hash": self.model_hash, "next_step": self.next_step,
            "losses": self.losses, "decoder": self.vae.state_dict(), "optimizer": self.optimizer.state_dict()})

    def load_checkpoint(self) -> bool:
        state = load_checkpoint(self.checkpoint_path, self.config, ("model_hash", self.model_hash, "model's decoder"))
        if state is None:
            return False
        self.vae.load_state_dict(state["decoder"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.next_step, self.losses = state["next_step"], [tuple(x) for x in state["losses"]]
        return True

    def step(self, step: int) -> float:
        config = self.config
        rng = np.random.default_rng([config.seed, step])
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.from_numpy(rng.integers(len(self.images), size=config.batch))
        means = self.means[index]
        # Noise in the UNet's units (unit variance after the scaling factor), a random size per example:
        # the decoder sees latents as far off as a sampler leaves them, and the exact ones as well.
        largest = config.latent_noise / self.vae.config.scaling_factor
        std = torch.rand(len(index), 1, 1, 1, generator=generator) * largest
        latents = means + std * torch.randn(means.shape, generator=generator)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, config.steps, config.lr, config.warmup)
        self.vae.decoder.train()
        decoded = self.vae.decode(latents).sample
        loss = reconstruction_loss(decoded, self.images[index].float() / 127.5 - 1.0, self.object_mask[index],
                                   config.object_weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        return float(loss.detach())

    def save_model(self, out_dir: Path, provenance: dict) -> Path:
        """The model directory with this decoder: every other file copied unchanged, and the model's
        ``TRAINING.json`` (when it has one) kept, with this run's provenance under ``decoder_tuning``."""
        from diffusers import AutoencoderKL

        # A fresh module of the same config: saving the loaded one would record where it was read from.
        config = {key: value for key, value in self.vae.config.items() if key != "_name_or_path"}
        vae = AutoencoderKL.from_config(config)
        vae.load_state_dict(self.vae.state_dict())
        record = {**training_record(self.model_dir), "decoder_tuning": provenance}
        with staged_directory(out_dir) as staging:
            shutil.copytree(self.model_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns("vae"))
            vae.eval().save_pretrained(staging / "vae", safe_serialization=True)
            write_atomically(staging / "TRAINING.json", json.dumps(record, indent=2) + "\n")
        return Path(out_dir)


def tune_decoder(config: DecoderTuneConfig, model_dir: Path, out_dir: Path, work_dir: Path, echo=print) -> Path:
    """Tune (resuming from ``work_dir/checkpoint.pt`` when there is one) and save the model to ``out_dir``."""
    if config.threads:
        torch.set_num_threads(config.threads)
    tuner = DecoderTuner(config, model_dir, work_dir)
    if tuner.load_checkpoint():
        echo(f"resuming from step {tuner.next_step} of {config.steps}")
    started = time.monotonic()
    run_steps(tuner, config.steps, config.checkpoint_every, echo, log_every=100)
    recent = [loss for _, loss in tuner.losses][-100:]
    provenance = {
        "command": "python -m direct2v models tune-decoder", "config": config.training_settings(),
        "model_vae_sha256": tuner.model_hash, "commit": git_commit(), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "train_seconds_this_session": round(time.monotonic() - started, 1),
        "final_loss": round(float(np.mean(recent)), 5) if recent else None,
    }
    return tuner.save_model(out_dir, provenance)
