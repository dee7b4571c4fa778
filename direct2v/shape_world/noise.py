"""The shape-world models' noise schedule: SD 1.5's, with its signal-to-noise ratio divided by a
shift for a larger latent (``TrainConfig.snr_shift``), in training and in the saved scheduler alike."""

from __future__ import annotations

import torch


def shifted_betas(shift: float) -> list[float] | None:
    """SD 1.5's betas with every timestep's SNR divided by ``shift`` (Hoogeboom et al. 2023's shift
    for a larger latent), as a scheduler's ``trained_betas``; None for ``shift == 1`` (the schedule as
    SD 1.5 gives it, so an 8 x 8 model's scheduler config stays as it was)."""
    from direct2v.bundled.tiny_models import SD15_SCHEDULER

    if shift == 1:
        return None
    start, end, steps = SD15_SCHEDULER["beta_start"], SD15_SCHEDULER["beta_end"], SD15_SCHEDULER["num_train_timesteps"]
    # "scaled_linear" in float64, not diffusers' float32 alphas_cumprod: its cumulative product is off by up to
    # 8e-5 relative by the last step, and the committed 16 x 16 model's betas are these
    betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    shifted = alphas_cumprod / (alphas_cumprod + shift * (1 - alphas_cumprod))  # SNR' = SNR / shift
    previous = torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return (1 - shifted / previous).tolist()


def noise_schedule(shift: float = 1.0):
    """The training noise schedule (DDPM over SD 1.5's betas, shifted by ``shift``)."""
    from diffusers import DDPMScheduler

    from direct2v.bundled.tiny_models import SD15_SCHEDULER

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")
    return DDPMScheduler(**{key: SD15_SCHEDULER[key] for key in keys}, trained_betas=shifted_betas(shift))
