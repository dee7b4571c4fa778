"""Train the shape-world model: a small latent diffusion model in Stable Diffusion's exact format.

    python -m direct2v models train-shapes --out .state/models/shape-world

One config object (:class:`TrainConfig`) drives one loop. Steps ``[0, vae_steps)`` train the
autoencoder (``AutoencoderKL``, SD's 4-level layout: 64 px -> 8 x 8 x 4 latents; with ``latent_size=16``
three levels, 64 px -> 16 x 16 x 4, so that self-attention sees 4x the tokens); at ``vae_steps``
the fixed training set is encoded once and the latent scaling factor measured; the remaining steps
train the UNet (``UNet2DConditionModel``, SD's layout) and the CLIP text encoder together on the
v-prediction objective with SD 1.5's noise schedule (10% empty captions for
classifier-free guidance, v-prediction with the x0 error weighted max(SNR, 1), an EMA of both). The result is saved with ``save_pretrained`` as a
``StableDiffusionPipeline`` directory (safetensors), so every renderer path loads it unchanged.

Every step's randomness comes from ``(seed, step)``, so resuming from the checkpoint (written
every ``checkpoint_every`` steps and on Ctrl-C) continues exactly as an uninterrupted run would. For
the same reason a run may start its UNet phase from the finished autoencoder of another run whose
autoencoder settings are equal (``--autoencoder-from``): the autoencoder phase reads no UNet setting,
so that is the run from scratch, less the autoencoder's minutes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from direct2v.core.files import staged_directory, write_atomically
from direct2v.core.training import (
    CHECKPOINT,
    CheckpointError,
    checkpoint_settings,
    git_commit,
    learning_rate,
    load_checkpoint,
    run_steps,
    save_checkpoint,
)
from direct2v.shape_world import world
from direct2v.shape_world.noise import noise_schedule, shifted_betas

log = logging.getLogger(__name__)

UNET = {"sample_size": 8, "block_out_channels": (32, 64, 64, 64), "layers_per_block": 1,
        "attention_head_dim": 4, "cross_attention_dim": 64, "norm_num_groups": 8}
VAE = {"block_out_channels": (8, 16, 32, 64), "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}
#: The autoencoder's levels per latent side: each level after the first halves the image (64 px / 2**(n - 1)).
VAE_LEVELS = {8: (8, 16, 32, 64), 16: (16, 32, 64)}
TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}


class TrainConfig(BaseModel):
    """Everything a training run depends on; recorded beside the weights."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    data_seed: int = 0
    num_images: int = Field(20000, ge=64, description="fixed training scenes (captions are re-drawn every step)")
    latent_size: Literal[8, 16] = Field(
        8, description="latent side: 8 (an 8x autoencoder, SD's layout) or 16 (4x: the UNet's self-attention sees "
        "256 tokens at its finest level instead of 64, ~4x the UNet's work per step)")
    two_object_rate: float = 0.4
    vae_steps: int = Field(3600, ge=1)
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-4
    object_weight: float = Field(4.0, ge=0.0, description="extra loss weight on object pixels (they are a few % of the image)")
    unet_steps: int = Field(4000, ge=1)
    unet_batch: int = 128
    unet_lr: float = 1e-3
    warmup: int = 100
    empty_caption_rate: float = 0.1
    prediction_type: Literal["epsilon", "v_prediction"] = Field(
        "v_prediction", description="the UNet's target; with epsilon the layout barely shapes the loss at high "
        "noise, and a short run learns the colours but ignores every position word")
    loss_weight: Literal["truncated-snr", "min-snr"] = Field(
        "truncated-snr", description="per-timestep weight, as a weight on the x0 error: max(SNR, 1) (Salimans & Ho "
        "2022) keeps the high-noise steps, where the layout (every position word) is decided; min(SNR, gamma) "
        "(Hang et al. 2023) gives them ~SNR = 0.005 and a short run learns no position at all")
    min_snr_gamma: float = 5.0
    snr_shift: float | None = Field(
        None, gt=0, description="divide the noise schedule's signal-to-noise ratio by this at every timestep "
        "(None: (latent_size / 8) ** 2, so 1 at 8 x 8 and 4 at 16 x 16): a latent with 4x the elements keeps "
        "the layout readable through 4x the noise (Hoogeboom et al. 2023; measured in docs/shape-world.md)")
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int | None = None
    weights: Literal["ema", "raw"] = Field("ema", description="which weights the saved model gets")

    #: Settings that do not change what the steps compute: a checkpoint resumes whatever they are.
    OUTPUT_ONLY: ClassVar[frozenset[str]] = frozenset({"checkpoint_every", "threads", "weights"})
    #: The settings the autoencoder phase reads (its data, schedule and loss; ``seed`` also seeds the
    #: initial weights): runs equal in these train the same autoencoder.
    AUTOENCODER: ClassVar[frozenset[str]] = frozenset({
        "seed", "data_seed", "num_images", "latent_size", "two_object_rate", "vae_steps", "vae_batch", "vae_lr",
        "kl_weight", "object_weight", "warmup"})

    def training_settings(self) -> dict:
        return self.model_dump(exclude=set(self.OUTPUT_ONLY))

    def autoencoder_settings(self) -> dict:
        return self.model_dump(include=set(self.AUTOENCODER))

    @property
    def total_steps(self) -> int:
        return self.vae_steps + self.unet_steps

    @property
    def noise_shift(self) -> float:
        return self.snr_shift if self.snr_shift is not None else (self.latent_size / 8) ** 2


def autoencoder_state(path: Path, config: TrainConfig) -> dict:
    """The state a run of ``config`` has when its autoencoder is done, taken from the checkpoint at
    ``path`` (a work directory or its checkpoint file) of a run with the same autoencoder settings
    and its autoencoder phase done; for :meth:`Trainer.load_state`. The UNet, text encoder, their
    optimiser and EMA are not in it: the trainer's own, initialised from the same seed, are that
    run's. Read before any model is built, so that a wrong source fails at once."""
    path = Path(path)
    path = path / CHECKPOINT if path.is_dir() else path
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: give a training run's --work-dir or its {CHECKPOINT}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = TrainConfig(**checkpoint_settings(TrainConfig, state["config"]))
    theirs, ours = saved.autoencoder_settings(), config.autoencoder_settings()
    if theirs != ours:
        differing = sorted(key for key in ours if theirs[key] != ours[key])
        raise CheckpointError(f"{path} trained another autoencoder (differs in {', '.join(differing)})")
    if state["next_step"] < saved.vae_steps:
        raise CheckpointError(f"{path} is at step {state['next_step']}, before its autoencoder is done "
                              f"(step {saved.vae_steps}): resume that run first")
    return {"vae": state["vae"], "vae_opt": state["vae_opt"], "scaling_factor": state["scaling_factor"],
            "next_step": config.vae_steps, "losses": [x for x in state["losses"] if x[0] < config.vae_steps]}


def training_scenes(count: int, data_seed: int, two_object_rate: float) -> list[world.Scene]:
    """The fixed training set: ``count`` scenes of the training distribution, drawn from ``data_seed``."""
    rng = np.random.default_rng(data_seed)
    return [world.training_scene(rng, two_object_rate) for _ in range(count)]


def images_tensor(scenes: list[world.Scene]) -> torch.Tensor:
    """uint8 (N, 3, 64, 64)."""
    return torch.from_numpy(np.stack([world.draw(scene) for scene in scenes])).permute(0, 3, 1, 2).contiguous()


def object_mask(scenes: list[world.Scene], images: torch.Tensor) -> torch.Tensor:
    """Which pixels are an object's (bool, N x 1 x 64 x 64): the ones that are not the background colour."""
    backgrounds = torch.tensor([world.BACKGROUNDS[scene.background] for scene in scenes], dtype=torch.uint8)
    return (images != backgrounds[:, :, None, None]).any(dim=1, keepdim=True)


def reconstruction_loss(decoded: torch.Tensor, pixels: torch.Tensor, on_object: torch.Tensor,
                        object_weight: float) -> torch.Tensor:
    """The autoencoder's pixel loss: squared error plus a tenth of the absolute error, weighted
    ``1 + object_weight`` on object pixels (a few % of the image, and what every metric reads)."""
    error = decoded - pixels
    weights = 1.0 + object_weight * on_object.float()
    return (weights * (error.pow(2) + 0.1 * error.abs())).mean()


def tokenizer_corpus(seed: int = 0, lines: int = 400) -> str:
    """Shape-world captions for the tokenizer's BPE, so that its words are whole tokens."""
    from direct2v.bundled.tiny_models import CORPUS

    rng = np.random.default_rng(seed)
    captions = [world.caption(world.training_scene(rng), rng) for _ in range(lines)]
    return CORPUS + "\n".join(captions) + "\n"


def build_components(staging: Path, seed: int, latent_size: int = 8):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from direct2v.bundled.tiny_models import SD_UNET_LAYOUT, SD_VAE_LAYOUT, build_clip_tokenizer, tiny_text_config

    tokenizer = build_clip_tokenizer(staging / "tokenizer", corpus=tokenizer_corpus(seed))
    levels = VAE_LEVELS[latent_size]
    vae_layout = {**SD_VAE_LAYOUT, "down_block_types": ("DownEncoderBlock2D",) * len(levels),
                  "up_block_types": ("UpDecoderBlock2D",) * len(levels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(**vae_layout, **(VAE | {"block_out_channels": levels}))
        unet = UNet2DConditionModel(**SD_UNET_LAYOUT, **(UNET | {"sample_size": latent_size}))
        text_encoder = CLIPTextModel(CLIPTextConfig(**(tiny_text_config(tokenizer) | TEXT)))
    return tokenizer, vae, unet, text_encoder


class Trainer:
    """The models, optimisers and EMA of one run; ``step(i)`` does training step i."""

    def __init__(self, config: TrainConfig, work_dir: Path):
        self.config = config
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer, self.vae, self.unet, self.text_encoder = build_components(
            self.work_dir / "staging", config.seed, config.latent_size)
        self.scenes = training_scenes(config.num_images, config.data_seed, config.two_object_rate)
        self.images = images_tensor(self.scenes)
        self.object_mask = object_mask(self.scenes, self.images)
        self.vae_opt = torch.optim.AdamW(self.vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.unet_opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=0.01)
        self.ema_unet = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
        self.ema_text = {k: v.detach().clone() for k, v in self.text_encoder.state_dict().items()}
        self.latents: torch.Tensor | None = None
        self.scaling_factor: float | None = None
        self.noise = noise_schedule(config.noise_shift)
        self.empty_ids = self._tokens([""])
        self.next_step = 0
        self.losses: list[tuple[int, float]] = []

    # ------------------------------------------------------------ state

    @property
    def checkpoint_path(self) -> Path:
        return self.work_dir / CHECKPOINT

    def state(self) -> dict:
        return {
            "config": self.config.model_dump(), "next_step": self.next_step, "losses": self.losses,
            "vae": self.vae.state_dict(), "unet": self.unet.state_dict(), "text": self.text_encoder.state_dict(),
            "vae_opt": self.vae_opt.state_dict(), "unet_opt": self.unet_opt.state_dict(),
            "ema_unet": self.ema_unet, "ema_text": self.ema_text, "scaling_factor": self.scaling_factor,
        }

    def save_checkpoint(self) -> None:
        save_checkpoint(self.checkpoint_path, self.state())

    def load_checkpoint(self) -> bool:
        state = load_checkpoint(self.checkpoint_path, self.config)
        if state is not None:
            self.load_state(state)
        return state is not None

    def load_state(self, state: dict) -> None:
        """Every part of a :meth:`state` that ``state`` holds, then the latents when the UNet phase has begun."""
        self.vae.load_state_dict(state["vae"])
        self.vae_opt.load_state_dict(state["vae_opt"])
        if "unet" in state:
            self.unet.load_state_dict(state["unet"])
            self.text_encoder.load_state_dict(state["text"])
            self.unet_opt.load_state_dict(state["unet_opt"])
            self.ema_unet, self.ema_text = state["ema_unet"], state["ema_text"]
        self.next_step, self.losses = state["next_step"], [tuple(x) for x in state["losses"]]
        self.scaling_factor = state["scaling_factor"]
        if self.next_step >= self.config.vae_steps:  # here, not in the first step: its rate is the loop's estimate
            self.encode_dataset()

    # ------------------------------------------------------------ steps

    def _tokens(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def _batch_rng(self, step: int) -> tuple[np.random.Generator, torch.Generator]:
        return np.random.default_rng([self.config.seed, step]), torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)

    def vae_step(self, step: int) -> float:
        config = self.config
        rng, _ = self._batch_rng(step)
        index = torch.from_numpy(rng.integers(len(self.images), size=config.vae_batch))
        pixels = self.images[index].float() / 127.5 - 1.0
        for group in self.vae_opt.param_groups:
            group["lr"] = learning_rate(step, config.vae_steps, config.vae_lr, config.warmup)
        # The posterior mean, not a sample: a sample's noise (std 1 at initialisation) drowns the
        # signal of these flat images for most of a short run. Only the means are ever used (the
        # UNet is trained on them); a small penalty on their size stands in for the KL term.
        latent = self.vae.encode(pixels).latent_dist.mean
        decoded = self.vae.decode(latent).sample
        loss = (reconstruction_loss(decoded, pixels, self.object_mask[index], config.object_weight)
                + config.kl_weight * latent.pow(2).mean())
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.vae_opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def encode_dataset(self) -> None:
        """Posterior means of every training image, and the factor that gives them unit variance."""
        self.vae.eval()
        means = [self.vae.encode(chunk.float() / 127.5 - 1.0).latent_dist.mean for chunk in self.images.split(256)]
        latents = torch.cat(means)
        if self.scaling_factor is None:
            self.scaling_factor = float(1.0 / latents.std())
        self.latents = latents * self.scaling_factor

    def unet_step(self, step: int) -> float:
        config = self.config
        local = step - config.vae_steps
        rng, gen = self._batch_rng(step)
        index = rng.integers(len(self.scenes), size=config.unet_batch)
        captions = ["" if rng.random() < config.empty_caption_rate else world.caption(self.scenes[i], rng) for i in index]
        latents = self.latents[torch.from_numpy(index)]
        noise = torch.randn(latents.shape, generator=gen)
        timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (len(index),), generator=gen)
        noisy = self.noise.add_noise(latents, noise, timesteps)
        for group in self.unet_opt.param_groups:
            group["lr"] = learning_rate(local, config.unet_steps, config.unet_lr, config.warmup)
        hidden = self.text_encoder(self._tokens(captions))[0]
        predicted = self.unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        alphas = self.noise.alphas_cumprod[timesteps]
        snr = alphas / (1 - alphas)
        # the v error is (SNR + 1) x the x0 error, the epsilon error SNR x; weight the x0 error
        x0_weight = torch.clamp(snr, min=1.0) if config.loss_weight == "truncated-snr" else torch.clamp(
            snr, max=config.min_snr_gamma)
        if config.prediction_type == "v_prediction":
            target, weight = self.noise.get_velocity(latents, noise, timesteps), x0_weight / (snr + 1)
        else:
            target, weight = noise, x0_weight / snr
        loss = (weight * ((predicted - target) ** 2).mean(dim=(1, 2, 3))).mean()
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.unet_opt.param_groups for p in g["params"]], 1.0)
        self.unet_opt.step()
        self._update_ema(local)
        return float(loss.detach())

    @torch.no_grad()
    def _update_ema(self, updates: int) -> None:
        # warm-up: early averages must not keep the random initialisation (0.999**2000 is still 14%)
        decay = min(self.config.ema_decay, (1 + updates) / (10 + updates))
        for ema, model in ((self.ema_unet, self.unet), (self.ema_text, self.text_encoder)):
            for key, value in model.state_dict().items():
                if value.dtype.is_floating_point:
                    ema[key].mul_(decay).add_(value.detach(), alpha=1 - decay)
                else:
                    ema[key].copy_(value)

    def step(self, step: int) -> float:
        if step < self.config.vae_steps:
            self.vae.train()
            return self.vae_step(step)
        if self.latents is None:
            self.encode_dataset()
            log.info("autoencoder done; latent scaling factor %.4f", self.scaling_factor)
        self.unet.train()
        self.text_encoder.train()
        return self.unet_step(step)

    # ------------------------------------------------------------ output

    def save_pipeline(self, out_dir: Path, provenance: dict) -> Path:
        from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
        from transformers import CLIPImageProcessorPil, CLIPTextModel

        from direct2v.bundled.tiny_models import SD15_SCHEDULER

        ema = self.config.weights == "ema"
        unet = UNet2DConditionModel.from_config(self.unet.config)
        unet.load_state_dict(self.ema_unet if ema else self.unet.state_dict())
        text_encoder = CLIPTextModel(self.text_encoder.config)
        text_encoder.load_state_dict(self.ema_text if ema else self.text_encoder.state_dict())
        vae = AutoencoderKL.from_config(self.vae.config, scaling_factor=self.scaling_factor)
        vae.load_state_dict(self.vae.state_dict())
        pipeline = StableDiffusionPipeline(
            vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=self.tokenizer, unet=unet.eval(),
            scheduler=PNDMScheduler.from_config({**SD15_SCHEDULER, "prediction_type": self.config.prediction_type,
                                                 "trained_betas": shifted_betas(self.config.noise_shift)}),
            safety_checker=None,
            feature_extractor=CLIPImageProcessorPil(), requires_safety_checker=False,
        )
        with staged_directory(out_dir) as staging:
            pipeline.save_pretrained(staging, safe_serialization=True)
            write_atomically(staging / "TRAINING.json", json.dumps(provenance, indent=2) + "\n")
        return Path(out_dir)


def train(config: TrainConfig, out_dir: Path, work_dir: Path, echo=print, autoencoder_from: Path | None = None) -> Path:
    """Train and save the pipeline to ``out_dir``: resuming from ``work_dir/checkpoint.pt`` when there
    is one; else, given ``autoencoder_from``, starting at the UNet phase with that run's autoencoder."""
    if config.threads:
        torch.set_num_threads(config.threads)
    source = autoencoder_state(autoencoder_from, config) if autoencoder_from is not None else None
    trainer = Trainer(config, work_dir)
    if trainer.load_checkpoint():
        echo(f"resuming from step {trainer.next_step} of {config.total_steps}")
    elif source is not None:
        trainer.load_state(source)
        echo(f"autoencoder from {autoencoder_from}: starting at step {trainer.next_step} of {config.total_steps}")
    started = time.monotonic()
    run_steps(trainer, config.total_steps, config.checkpoint_every, echo, log_every=50,
              phase=lambda step: "vae" if step < config.vae_steps else "unet")
    seconds = time.monotonic() - started
    provenance = {
        "command": "python -m direct2v models train-shapes", "config": config.model_dump(), "commit": git_commit(),
        "train_seconds_this_session": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "latent_scaling_factor": trainer.scaling_factor,
        "autoencoder_from": str(autoencoder_from) if autoencoder_from is not None else None,
        "final_losses": {"vae": _mean_loss(trainer.losses, 0, config.vae_steps),
                         "unet": _mean_loss(trainer.losses, config.vae_steps, config.total_steps)},
    }
    return trainer.save_pipeline(out_dir, provenance)


def _mean_loss(losses, start: int, stop: int, last: int = 100) -> float | None:
    values = [loss for step, loss in losses if start <= step < stop][-last:]
    return round(float(np.mean(values)), 5) if values else None
