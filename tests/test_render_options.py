"""Renderer options end to end on the tiny model: schedulers, dtypes, the random-VM ablation, the
wiring from RenderSettings, and fp16 safety (NaN/black frames fail the video)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, PNDMScheduler

from direct2v.core.config import RenderSettings
from direct2v.director.plan import FramePlan
from direct2v.render.attention import RotationalValueMappingProcessor
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.renderer import REFERENCE_SEED_OFFSET, Renderer, RenderError
from direct2v.render.rvm import reference_schedule

FAST = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
PROMPTS = ["a red fox runs across a snowy field", "the fox stops and looks up", "the fox jumps into the snow"]


def render(pipe, seed=0, **kwargs):
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **{**FAST, **kwargs})


def count_unet_calls(pipe, **kwargs) -> tuple[np.ndarray, int]:
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        return render(pipe, **kwargs), len(calls)
    finally:
        handle.remove()


# --- schedulers ----------------------------------------------------------------------------------


def test_named_schedulers_come_from_the_model_config(pipe):
    for name, cls in [("pndm", PNDMScheduler), ("ddim", DDIMScheduler), ("dpmsolver++", DPMSolverMultistepScheduler)]:
        scheduler = pipe.make_scheduler(name)
        assert type(scheduler) is cls and scheduler is not pipe.scheduler
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "steps_offset"):
            assert scheduler.config[key] == pipe.scheduler.config[key]
    assert pipe.make_scheduler("dpmsolver++").config.algorithm_type == "dpmsolver++"
    assert pipe.make_scheduler(None) is pipe.scheduler


@pytest.mark.parametrize("config_says", [False, None])
def test_no_sampler_clips_the_latents_to_the_pixel_range(pipe, monkeypatch, config_says):
    # DDIM's own default clips x0 to [-1, 1], which erases unit-variance latents (the shape world's
    # DDIM videos came out empty); a model config without the key must not get that default.
    config = {key: value for key, value in pipe.scheduler.config.items() if key != "clip_sample"}
    if config_says is not None:
        config["clip_sample"] = config_says
    monkeypatch.setattr(pipe, "scheduler", PNDMScheduler.from_config(config))
    for name in ("ddim", "dpmsolver++", "euler", "lcm"):
        scheduler = pipe.make_scheduler(name)
        scheduler.set_timesteps(10)
        latents = 3.0 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
        step = scheduler.step(torch.zeros_like(latents), scheduler.timesteps[-1], latents)
        assert step.prev_sample.abs().max() > 2.0, name


def test_each_scheduler_renders_deterministically(pipe):
    videos = {}
    others = [(name, 10 - 9 + 2 + 9) for name in ("ddim", "dpmsolver++", "euler", "euler-ancestral", "lcm")]
    for name, expected_calls in [("pndm", 11 - 9 + 2 + 9), *others]:
        video, calls = count_unet_calls(pipe, scheduler=name)
        assert calls == expected_calls  # PNDM (PLMS) has one extra timestep, as in diffusers
        assert np.isfinite(video).all() and video.std() > 0.01
        assert np.array_equal(video, render(pipe, scheduler=name))
        videos[name] = video
    names = list(videos)
    assert all(not np.array_equal(videos[a], videos[b]) for a in names for b in names if a < b)
    assert np.array_equal(videos["pndm"], render(pipe))  # the model's registered scheduler is PNDM
    assert type(pipe.scheduler) is PNDMScheduler  # a call never replaces it


def guided_steps(pipe, guidance_scale: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(UNet output, noise given to the scheduler) of every denoising step of one render."""
    outputs, given = [], []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: outputs.append(output.sample.clone()))
    make_scheduler, spied = pipe.make_scheduler, []

    def spying_scheduler(name):
        scheduler = make_scheduler(name)  # None: the pipeline's registered scheduler itself
        step = scheduler.step
        scheduler.step = lambda noise, *args, **kwargs: (given.append(noise.clone()), step(noise, *args, **kwargs))[1]
        spied.append(scheduler)
        return scheduler

    pipe.make_scheduler = spying_scheduler
    try:
        render(pipe, guidance_scale=guidance_scale)
    finally:
        handle.remove()
        del pipe.make_scheduler
        for scheduler in spied:  # the spy must not outlive the test: later deep copies would share its state
            del scheduler.step
    assert len(outputs) == len(given) > 0
    return list(zip(outputs, given))


@pytest.mark.parametrize("guidance_scale", [3.0, 12.0])
def test_guidance_combines_the_two_halves_with_the_scale(pipe, guidance_scale):
    """Classifier-free guidance: every step's noise is uncond + s * (cond - uncond) of the UNet's
    [uncond frames, cond frames] batch, with s the scale asked for."""
    for output, noise in guided_steps(pipe, guidance_scale):
        uncond, cond = output.chunk(2)
        assert torch.allclose(noise, uncond + guidance_scale * (cond - uncond), atol=1e-6)
        assert not torch.allclose(cond, uncond)  # so the scale decides the step


# --- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_deterministic(tiny_sd_dir, dtype):
    half = DirecT2VPipeline.from_local_dir(tiny_sd_dir, torch_dtype=dtype)
    first, second = (
        half(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="latent", **FAST) for _ in range(2)
    )
    assert first.dtype == dtype and torch.isfinite(first).all()
    assert torch.equal(first, second)


# --- the random value-mapping ablation -----------------------------------------------------------


def test_random_value_mapping_draws_from_its_own_generator(pipe):
    seen = []

    def spy(module, args, kwargs):
        rvm = next(p for p in module.attn_processors.values() if isinstance(p, RotationalValueMappingProcessor))
        seen.append(rvm.state.index)

    def run(seed):
        return render(pipe, value_mapping="random", reference_generator=torch.Generator().manual_seed(seed))

    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        first = run(3)
    finally:
        handle.remove()
    expected = reference_schedule(9, 3, "random", generator=torch.Generator().manual_seed(3))
    assert seen[-9:] == expected
    assert np.array_equal(first, run(3))
    assert not np.array_equal(first, render(pipe))


def test_random_value_mapping_leaves_the_noise_generator_alone(pipe):
    noise = {}
    for mode, extra in [("rotational", {}), ("random", {"reference_generator": torch.Generator().manual_seed(0)})]:
        generator = torch.Generator().manual_seed(0)
        pipe(PROMPTS, generator=generator, value_mapping=mode, output_type="latent", **FAST, **extra)
        noise[mode] = generator.get_state()
    assert torch.equal(noise["rotational"], noise["random"])  # the same draws, so the same noise


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"value_mapping": "random"}, "reference_generator"),
        ({"value_mapping": "spiral"}, "value_mapping"),
        ({"scheduler": "heun"}, "scheduler"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 4.0}, "batch_size"),
    ],
)
def test_invalid_option_arguments_raise(pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        render(pipe, **kwargs)


# --- the render stage ----------------------------------------------------------------------------


def settings(model_dir, **overrides) -> RenderSettings:
    return RenderSettings(model_dir=model_dir, device="cpu", dtype="float32", **FAST, **overrides)


def plan(frames=PROMPTS, seed=7) -> FramePlan:
    return FramePlan(prompt_id="fox", prompt="a fox in the snow", fps=2, seed=seed, frames=list(frames))


def test_renderer_passes_every_setting_to_the_pipeline(tiny_sd_dir):
    chosen = settings(tiny_sd_dir, rvm_period_steps=2, rvm_blocks="all", value_mapping="random", dsf=False,
                      dsf_quantile=0.2, scheduler="ddim", batch_size=4, negative_prompt="blurry",
                      motion_strength_x=3.0, motion_strength_y=-2.0, height=72, width=128)
    renderer = Renderer(chosen)
    received = {}

    def fake(frame_prompts, call, *, generator, reference_generator, progress, **changes):
        received.update(frame_prompts=frame_prompts, call=call.replace(**changes), generator=generator,
                        reference_generator=reference_generator)
        return np.full((len(frame_prompts), 8, 8, 3), 0.5, dtype=np.float32)

    renderer.pipeline = fake
    renderer.render(plan())
    call = received["call"]
    for field in ("negative_prompt", "num_inference_steps", "guidance_scale", "t0", "t1", "height", "width",
                  "rvm_blocks", "value_mapping", "dsf", "dsf_quantile", "scheduler", "batch_size",
                  "motion_strength_x", "motion_strength_y"):
        assert getattr(call, field) == getattr(chosen, field), field
    assert call.rvm_period == 2  # rvm_period_steps: absolute, not scaled to the 10 steps
    assert received["frame_prompts"] == PROMPTS
    assert received["generator"].initial_seed() == 7
    assert received["reference_generator"].initial_seed() == 7 + REFERENCE_SEED_OFFSET


def test_renderer_is_reproducible_from_the_plan_seed(tiny_sd_dir):
    renderer = Renderer(settings(tiny_sd_dir, batch_size=2))  # 3 frames, B = 2: the chunked path
    first = renderer.render(plan())
    assert first.shape == (3, 64, 64, 3)
    assert np.array_equal(first, renderer.render(plan()))


@pytest.mark.parametrize("batch_size, label, calls", [(8, "joint pass", 4 + 9), (2, "anchors", 4 + 9)])
def test_nan_latents_fail_the_video_before_decoding(tiny_sd_dir, batch_size, label, calls):
    renderer = Renderer(settings(tiny_sd_dir, batch_size=batch_size))
    unet_calls, decoded = [], []

    def poison(module, args, output):  # an fp16 overflow in the 8th UNet call (inside the joint pass)
        unet_calls.append(1)
        if len(unet_calls) == 8:
            output.sample[0, 0, 0, 0] = math.nan
        return output

    handle = renderer.pipeline.unet.register_forward_hook(poison)
    decode = renderer.pipeline.decode
    renderer.pipeline.decode = lambda latents: decoded.append(1) or decode(latents)
    try:
        with pytest.raises(RenderError, match=f"fox: the latents became NaN/inf during {label}"):
            renderer.render(plan())
    finally:
        handle.remove()
    # it stops at the end of the poisoned segment (chunked: before any section), and decodes nothing
    assert decoded == [] and len(unet_calls) == calls


@pytest.mark.parametrize("value, message", [(math.nan, "NaN/inf"), (0.0, "completely black")])
def test_bad_decoded_frames_fail_the_video(tiny_sd_dir, value, message):
    renderer = Renderer(settings(tiny_sd_dir))
    decode = renderer.pipeline.decode

    def broken(latents, batch_size=None):
        frames = decode(latents, batch_size)
        frames[1] = value  # e.g. an fp16 VAE overflow in one frame
        return frames

    renderer.pipeline.decode = broken
    with pytest.raises(RenderError, match=message):
        renderer.render(plan())


def test_decoding_in_batches_gives_the_frames_of_one_call(pipe):
    """The VAE decodes ``batch_size`` frames per call (bounded memory for long videos): same pixels."""
    latents = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    whole = pipe.decode(latents)
    assert whole.shape == (5, 64, 64, 3)
    for batch_size in (1, 2, 8):
        assert np.allclose(pipe.decode(latents, batch_size), whole, atol=1e-5)  # float batching only
