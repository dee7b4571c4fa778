"""Samplers beyond the paper's PNDM: stochastic noise per (seed, global frame, step), Euler's latent
form, and LoRAs (LCM-LoRA) loaded from a local directory and fused."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from direct2v.bundled.tiny_models import build_tiny_lora
from direct2v.core.config import RenderSettings
from direct2v.core.files import LORA_WEIGHTS, render_model_id
from direct2v.director.plan import FramePlan
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.renderer import Renderer
from direct2v.render.sampling import EulerDiscreteScheduler, forward_diffuse_with, step_noise_generators

PROMPTS = ["a red fox runs", "the fox stops", "the fox looks up", "the fox jumps", "snow falls"]


def render(pipe, scheduler, steps, **kwargs):
    options = {"rvm_period": math.inf, "dsf": False, "output_type": "latent", "guidance_scale": 7.5}
    return pipe(PROMPTS, num_inference_steps=steps, scheduler=scheduler, generator=torch.Generator().manual_seed(0),
                **{**options, **kwargs})


@pytest.mark.parametrize("scheduler, steps", [("euler-ancestral", 10), ("lcm", 6)])
def test_stochastic_sampler_chunked_equals_unchunked(pipe, scheduler, steps):
    """m=inf, DSF off: the noise of a frame depends on its global index, not on its batch."""
    whole = render(pipe, scheduler, steps, batch_size=8)
    scale = whole.abs().max().item()
    for batch_size in (2, 4):  # sections of 1 and 2 frames around cached anchors
        chunked = render(pipe, scheduler, steps, batch_size=batch_size)
        assert (chunked - whole).abs().max().item() <= 1e-5 * scale
    assert torch.equal(whole, render(pipe, scheduler, steps, batch_size=8))  # deterministic
    other_seed = pipe(PROMPTS, num_inference_steps=steps, scheduler=scheduler, rvm_period=math.inf, dsf=False,
                      guidance_scale=7.5, generator=torch.Generator().manual_seed(1), output_type="latent")
    assert not torch.allclose(other_seed, whole)


def test_step_noise_is_a_function_of_seed_frame_and_step_only():
    def draw(seed, frames, step):
        return torch.stack([torch.randn(4, generator=g) for g in step_noise_generators(seed, frames, step)])

    assert torch.equal(draw(3, [0, 5], 7)[1], draw(3, [5], 7)[0])  # frame 5, whatever its batch
    distinct = [draw(3, [5], 7), draw(3, [6], 7), draw(3, [5], 8), draw(4, [5], 7)]
    assert all(not torch.equal(a, b) for i, a in enumerate(distinct) for b in distinct[i + 1:])
    assert step_noise_generators(None, [0, 1], 7) is None


def test_euler_pushes_latents_back_in_its_own_latent_form(pipe):
    """An Euler latent is x_0 + sigma * noise; with x_0 = 0 the pushed-back latents must have the
    spread of the later sigma (the DDPM formula applied to them as they are would not)."""
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(20)
    index_from, index_to = 20 - 17 - 1, 20 - 18 - 1
    sigma_from, sigma_to = float(scheduler.sigmas[index_from]), float(scheduler.sigmas[index_to])
    latents = sigma_from * torch.randn(64, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    pushed = forward_diffuse_with(scheduler, latents, index_from, index_to, torch.Generator().manual_seed(1))
    assert sigma_to > sigma_from > 1
    assert pushed.std().item() == pytest.approx(sigma_to, rel=0.03)


# --- LoRA ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(tiny_sd_dir, tmp_path_factory):
    return build_tiny_lora(tiny_sd_dir, tmp_path_factory.mktemp("lora") / "tiny-lora", seed=3)


def test_fusing_a_lora_changes_the_unet_by_exactly_its_delta(tiny_sd_dir, lora_dir):
    pipe = DirecT2VPipeline.from_local_dir(tiny_sd_dir)
    before = {name: weight.clone() for name, weight in pipe.unet.state_dict().items()}
    pipe.fuse_local_lora(lora_dir, scale=0.5)
    after = pipe.unet.state_dict()
    factors = load_file(lora_dir / LORA_WEIGHTS)  # read back from disk, as saved
    assert set(after) == set(before)  # plain weights again: the adapter layers are gone
    changed = 0
    for name, weight in after.items():
        down = factors.get(f"unet.{name.removesuffix('.weight')}.lora.down.weight")
        if down is None:
            assert torch.equal(weight, before[name]), name
        else:
            up = factors[f"unet.{name.removesuffix('.weight')}.lora.up.weight"]
            assert torch.allclose(weight, before[name] + 0.5 * up @ down, atol=1e-6), name
            changed += 1
    assert changed == len(factors) // 2 > 0


def test_a_render_with_a_lora_runs_end_to_end_and_names_it(tiny_sd_dir, lora_dir):
    plan = FramePlan(prompt_id="fox", prompt="a fox", fps=2, seed=0, frames=PROMPTS[:3])
    common = {"model_dir": tiny_sd_dir, "device": "cpu", "dtype": "float32", "scheduler": "lcm",
              "num_inference_steps": 4}
    with_lora = Renderer(RenderSettings(**common, lora_dir=lora_dir))
    frames = with_lora.render(plan)
    assert frames.shape == (3, 64, 64, 3) and np.isfinite(frames).all()
    assert with_lora.model_id == render_model_id(tiny_sd_dir, lora_dir) and "+tiny-lora@" in with_lora.model_id
    assert not np.array_equal(frames, Renderer(RenderSettings(**common)).render(plan))


def test_a_missing_lora_is_named(tiny_sd_dir, tmp_path):
    pipe = DirecT2VPipeline.from_local_dir(tiny_sd_dir)
    with pytest.raises(FileNotFoundError, match="no LoRA at"):
        pipe.fuse_local_lora(tmp_path / "nothing-here")


def test_cli_renders_with_lcm_and_a_lora(tmp_path, run_cli, tiny_render_env, lora_dir):
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = {"prompt_id": "boat", "prompt": "a boat", "fps": 2, "seed": 1, "frames": ["a boat at dawn", "a boat at dusk"]}
    (plans / "boat.json").write_text(json.dumps(plan))
    env = {**tiny_render_env, "DIRECT2V_RENDER__T0": "", "DIRECT2V_RENDER__T1": ""}  # the fractions, at 4 steps
    env = {key: value for key, value in env.items() if value}
    lcm = ["--set", "render.scheduler=lcm", "--set", "render.num_inference_steps=4"]
    done = run_cli(["render", "--plans", plans, "--out", tmp_path / "out", *lcm, "--set", f"render.lora_dir={lora_dir}"], env)
    assert done.returncode == 0, done.stderr[-3000:]
    [row] = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert row["status"] == "ok" and "+tiny-lora@" in row["render_model"]
    missing = run_cli(["render", "--plans", plans, "--out", tmp_path / "out2", *lcm,
                       "--set", f"render.lora_dir={tmp_path / 'no-lora'}"], env)
    assert missing.returncode == 2 and "render.lora_dir: no LoRA at" in missing.stderr
    assert "Traceback" not in missing.stderr
