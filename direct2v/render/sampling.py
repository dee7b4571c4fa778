"""The samplers a render can use, and the randomness of a render, as small pure functions.

``SCHEDULERS`` names the diffusers samplers (each built from the model's own scheduler config by
the pipeline). Randomness comes from the render's seed only: :func:`draw_normal` draws on the
generator's device (a CPU seed gives the same video on any device); a stochastic sampler's per-step
noise comes from generators keyed by (seed, GLOBAL frame index, step), so chunking never changes a
frame's noise (:func:`step_kwargs`); :func:`forward_diffuse_with` is Text2Video-Zero's forward
process in each sampler's latent form.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

#: Scheduler names -> (class, overrides); each is built from the model's own scheduler config.
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmsolver++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, {}),
    "lcm": (LCMScheduler, {}),
}

#: Samplers whose latents are x_0 + sigma * noise (variance exploding) rather than
#: sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) noise: the forward process of step 2 converts.
VARIANCE_EXPLODING = (EulerDiscreteScheduler, EulerAncestralDiscreteScheduler)

#: Samplers that draw fresh noise at every step (their ``step`` takes per-frame generators).
STOCHASTIC = (EulerAncestralDiscreteScheduler, LCMScheduler)


def forward_diffuse(
    latents: torch.Tensor, alphas: torch.Tensor, t_from: int, t_to: int, generator: torch.Generator | None
) -> torch.Tensor:
    """DDPM forward process from timestep ``t_from`` to ``t_to`` > ``t_from``, as Text2Video-Zero does it.

    The signal factor is ``prod(alphas[t_from:t_to])`` (Text2Video-Zero's indexing; the exact
    transition would be ``alphas[t_from+1:t_to+1]``, a one-step difference that is kept here for
    equality with diffusers). One normal draw of the latents' shape is taken from ``generator``.
    """
    noise = draw_normal(latents.shape, generator, latents.device, latents.dtype)
    alpha = torch.prod(alphas[t_from:t_to])
    return torch.sqrt(alpha) * latents + torch.sqrt(1 - alpha) * noise


def forward_diffuse_with(
    scheduler: SchedulerMixin, latents: torch.Tensor, index_from: int, index_to: int, generator: torch.Generator | None
) -> torch.Tensor:
    """:func:`forward_diffuse` from the latents after timestep index ``index_from`` back to those of
    ``index_to`` < ``index_from``, in the latent form of ``scheduler``.

    A variance-exploding sampler (Euler) holds ``x / sqrt(alpha_bar)``: the latents are converted to
    the DDPM form with the sampler's own sigmas (``alpha_bar = 1 / (1 + sigma^2)``), pushed back, and
    converted again, so that every sampler starts its joint pass from the same kind of x_t1.
    """
    timesteps = scheduler.timesteps
    t_from, t_to = int(timesteps[index_from]), int(timesteps[index_to])
    if not isinstance(scheduler, VARIANCE_EXPLODING):
        return forward_diffuse(latents, scheduler.alphas, t_from, t_to, generator)
    sigma_from, sigma_to = (float(scheduler.sigmas[i]) for i in (index_from, index_to))
    ddpm = latents / math.sqrt(1 + sigma_from**2)
    return forward_diffuse(ddpm, scheduler.alphas, t_from, t_to, generator) * math.sqrt(1 + sigma_to**2)


def step_noise_generators(seed: int | None, frame_ids: Sequence[int], step: int) -> list[torch.Generator] | None:
    """One CPU generator per frame for a stochastic sampler's noise at ``step``.

    Each is seeded from ``(seed, GLOBAL frame index, step)`` only, so a frame draws the same noise
    whichever batch or section it is rendered in: a chunked render, an unchunked one and any batch
    size give the same video. None without a seed (unseeded noise).
    """
    if seed is None:
        return None
    return [torch.Generator("cpu").manual_seed(_mix(seed, frame, step)) for frame in frame_ids]


def _mix(*values: int) -> int:
    """A 63-bit seed from a few ints: neighbouring inputs give unrelated seeds."""
    digest = hashlib.sha256(":".join(str(value) for value in values).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def draw_normal(
    shape: Sequence[int], generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so a CPU seed gives the same video on any device)."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


def step_kwargs(scheduler: SchedulerMixin, seed: int | None, frame_ids: Sequence[int], timestep) -> dict:
    """What ``scheduler.step`` gets besides (noise, t, latents): for a stochastic sampler, one
    generator per frame keyed by the timestep itself (Euler's are fractional), the same in every
    pass and section; nothing for a deterministic one (no generators built on the hot path)."""
    if not isinstance(scheduler, STOCHASTIC):
        return {}
    return {"generator": step_noise_generators(seed, frame_ids, round(float(timestep) * 1000))}
