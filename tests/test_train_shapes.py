"""Training the shape-world model: a resumed run is the uninterrupted run, and its output is a
Stable Diffusion directory the renderer loads unchanged."""

import json
import math

import pytest
import torch
from diffusers import DDPMScheduler

from direct2v.bundled.tiny_models import SD15_SCHEDULER
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.core.training import CheckpointError
from direct2v.shape_world.training import TrainConfig, Trainer, autoencoder_state, train

TINY = {"num_images": 64, "vae_steps": 2, "unet_steps": 3, "vae_batch": 4, "unet_batch": 4, "warmup": 1, "checkpoint_every": 100}


def _weights(trainer):
    return {**{f"vae.{k}": v for k, v in trainer.vae.state_dict().items()},
            **{f"ema_unet.{k}": v for k, v in trainer.ema_unet.items()},
            **{f"ema_text.{k}": v for k, v in trainer.ema_text.items()}}


def test_resuming_from_a_checkpoint_continues_the_same_run(tmp_path):
    config = TrainConfig(**TINY)
    straight = Trainer(config, tmp_path / "straight")
    for step in range(config.total_steps):
        straight.step(step)

    first = Trainer(config, tmp_path / "resumed")
    for step in range(3):  # into the UNet phase: the resumed trainer must encode the data again
        first.step(step)
        first.next_step = step + 1
    first.save_checkpoint()
    resumed = Trainer(config, tmp_path / "resumed")
    assert resumed.load_checkpoint() and resumed.next_step == 3
    for step in range(3, config.total_steps):
        resumed.step(step)

    expected, got = _weights(straight), _weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert resumed.scaling_factor == straight.scaling_factor


def test_a_run_started_from_another_runs_autoencoder_is_the_run_from_scratch(tmp_path):
    longer = TrainConfig(**{**TINY, "unet_steps": 4})  # another UNet phase, the same autoencoder settings
    straight = Trainer(longer, tmp_path / "straight")
    for step in range(longer.total_steps):
        straight.step(step)

    train(TrainConfig(**TINY), tmp_path / "shorter-model", tmp_path / "shorter", echo=lambda line: None)
    started = Trainer(longer, tmp_path / "started")
    started.load_state(autoencoder_state(tmp_path / "shorter", longer))
    assert started.next_step == longer.vae_steps and [step for step, _ in started.losses] == [0, 1]
    for step in range(started.next_step, longer.total_steps):
        started.step(step)

    expected, got = _weights(straight), _weights(started)
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert started.scaling_factor == straight.scaling_factor


def test_an_autoencoder_of_other_settings_or_not_yet_done_is_refused(tmp_path):
    Trainer(TrainConfig(**TINY), tmp_path / "early").save_checkpoint()  # at step 0: no autoencoder yet
    train(TrainConfig(**TINY), tmp_path / "model", tmp_path / "done", echo=lambda line: None)
    cases = {tmp_path / "early": "before its autoencoder is done",
             tmp_path / "nowhere": "no checkpoint at"}
    for source, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            autoencoder_state(source, TrainConfig(**TINY))
    other = TrainConfig(**{**TINY, "vae_steps": 1, "kl_weight": 0.5})
    with pytest.raises(CheckpointError, match="differs in kl_weight, vae_steps"):
        autoencoder_state(tmp_path / "done" / "checkpoint.pt", other)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    trainer = Trainer(TrainConfig(**TINY), tmp_path)
    trainer.save_checkpoint()
    other = Trainer(TrainConfig(**{**TINY, "unet_steps": 4}), tmp_path)
    try:
        other.load_checkpoint()
    except ValueError as error:
        assert "other settings" in str(error)
    else:
        raise AssertionError("a checkpoint of other settings was accepted")


def test_the_trained_model_is_an_sd_directory_the_renderer_loads(tmp_path):
    out = train(TrainConfig(**TINY), tmp_path / "model", tmp_path / "work", echo=lambda line: None)
    provenance = json.loads((out / "TRAINING.json").read_text())
    assert provenance["config"]["unet_steps"] == 3 and provenance["latent_scaling_factor"] > 0
    pipe = DirecT2VPipeline.from_local_dir(out)
    assert pipe.vae.config.scaling_factor == provenance["latent_scaling_factor"]
    # plain diffusers' DDIMScheduler.from_config(pipe.scheduler.config) reads it: x0 must not be clipped
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["clip_sample"] is False
    frames = pipe(["a red circle on the left", "a red circle in the center"], num_inference_steps=4, t0=1, t1=2,
                  rvm_period=math.inf, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 64, 64, 3)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    trainer = Trainer(TrainConfig(**TINY), tmp_path)
    trainer.next_step = 1
    state = trainer.state()
    del state["config"]["latent_size"]  # written before the setting existed: that run's latents were 8 x 8
    torch.save(state, trainer.checkpoint_path)
    assert Trainer(TrainConfig(**TINY), tmp_path).load_checkpoint()
    try:
        Trainer(TrainConfig(**TINY, latent_size=16), tmp_path).load_checkpoint()
    except ValueError as error:
        assert "other settings" in str(error)
    else:
        raise AssertionError("an 8 x 8 checkpoint was continued as a 16 x 16 run")


def test_a_16_by_16_latent_model_keeps_the_world_at_64_px_and_gives_attention_4x_the_tokens(tmp_path):
    eight = Trainer(TrainConfig(**TINY), tmp_path / "eight")
    out = train(TrainConfig(**TINY, latent_size=16), tmp_path / "model", tmp_path / "work", echo=lambda line: None)
    pipe = DirecT2VPipeline.from_local_dir(out)
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    tokens = {}
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn1"):
            module.register_forward_hook(
                lambda m, args, kwargs, out, name=name: tokens.setdefault(name, args[0].shape[1]), with_kwargs=True)
    latents = pipe(["a red circle on the left", "a red circle in the center"], num_inference_steps=4, t0=1, t1=2,
                   generator=torch.Generator().manual_seed(0), output_type="latent")
    assert latents.shape[-2:] == (16, 16)
    # RVM's default blocks (up_blocks.2/.3) attend over 8 x 8 and 16 x 16 latent pixels, 4x the 8 x 8 model's
    assert tokens["up_blocks.3.attentions.0.transformer_blocks.0.attn1"] == 256
    assert tokens["up_blocks.2.attentions.0.transformer_blocks.0.attn1"] == 64
    assert eight.unet.config.sample_size == 8 and len(eight.vae.config.block_out_channels) == 4
    # the noise schedule is SD 1.5's with every SNR divided by 4, in training and in the saved scheduler
    # (so every sampler the renderer builds from its config samples what was trained); 8 x 8 keeps SD 1.5's
    snr = lambda alphas: alphas / (1 - alphas)  # noqa: E731
    sd15 = DDPMScheduler(**{key: SD15_SCHEDULER[key] for key in ("beta_start", "beta_end", "beta_schedule")})
    torch.testing.assert_close(snr(pipe.scheduler.alphas_cumprod.double()), snr(sd15.alphas_cumprod.double()) / 4,
                               rtol=1e-4, atol=0)
    torch.testing.assert_close(pipe.scheduler.alphas_cumprod, Trainer(TrainConfig(**TINY, latent_size=16),
                                                                      tmp_path / "work").noise.alphas_cumprod)
    assert eight.noise.config.trained_betas is None and torch.equal(eight.noise.alphas_cumprod, sd15.alphas_cumprod)
    frames = pipe(["a red circle on the left", "a red circle in the center"], num_inference_steps=4, t0=1, t1=2,
                  generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 64, 64, 3)
