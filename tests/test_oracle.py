"""The equivalence oracle: with the reference frame pinned to frame 0 on every attention layer, one
prompt for all frames and dual-softmax filtering off, DirecT2V is Text2Video-Zero, so it must
reproduce diffusers' TextToVideoZeroPipeline on the same weights, seed and schedule.

Tolerance: on fp32 CPU the two are bit-identical (same ops in the same order: same random draws,
same PNDM steps, the same SDPA reductions; our processor folds the frames into one query sequence
instead of copying the reference key/value per frame, which leaves every per-query reduction
unchanged). The assertions allow 1e-5 absolute so that a BLAS/SDPA kernel choosing a different
blocking for the different batch shapes on another CPU does not fail the test; anything larger
means the schedule, the noise order or the attention differs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from direct2v.bundled.tiny_models import build_tiny_sd
from direct2v.core.schedule import resolve_schedule
from direct2v.render.latent_schedule import translate_latents
from direct2v.render.pipeline import DirecT2VPipeline

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers.pipelines.deprecated.text_to_video_synthesis import pipeline_text_to_video_zero as t2vz

TOLERANCE = 1e-5
PROMPT = "a red fox runs across a snowy field"
SCHEDULE = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
FRAMES = 4


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    path = build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")
    ours = DirecT2VPipeline.from_local_dir(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = t2vz.TextToVideoZeroPipeline.from_pretrained(path, safety_checker=None, local_files_only=True)
    theirs.set_progress_bar_config(disable=True)
    return ours, theirs


def run_both(pipelines, output_type: str, motion: tuple[float, float]):
    ours, theirs = pipelines
    mine = ours(
        [PROMPT] * FRAMES,
        rvm_period=math.inf,
        rvm_blocks="all",
        dsf=False,  # dual-softmax filtering is on by default; Text2Video-Zero has none
        motion_strength_x=motion[0],
        motion_strength_y=motion[1],
        generator=torch.Generator().manual_seed(0),
        output_type="latent" if output_type == "latent" else "np",
        **SCHEDULE,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs(
            PROMPT,
            video_length=FRAMES,
            motion_field_strength_x=motion[0],
            motion_field_strength_y=motion[1],
            generator=torch.Generator().manual_seed(0),
            output_type=output_type,
            **SCHEDULE,
        ).images
    return mine, reference


# (64, -40): one latent cell (64 canvas px at 64 px) right and a fraction up per frame.
@pytest.mark.parametrize("motion", [(0.0, 0.0), (64.0, -40.0)])
def test_latents_equal_text2video_zero(pipelines, motion):
    mine, reference = run_both(pipelines, "latent", motion)
    assert mine.shape == reference.shape == (FRAMES, 4, 8, 8)
    assert (mine - reference).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("motion", [(0.0, 0.0), (64.0, -40.0)])
def test_frames_equal_text2video_zero(pipelines, motion):
    mine, reference = run_both(pipelines, "np", motion)
    assert mine.shape == reference.shape == (FRAMES, 64, 64, 3)
    assert np.abs(mine - reference).max() < TOLERANCE


@pytest.mark.parametrize("steps", [20, 50, 100])
def test_latents_equal_text2video_zero_at_any_step_count(pipelines, steps):
    """Ours resolves the window from the step count (t0/t1 left None); diffusers gets the same
    absolute t0/t1, which is what its users would have to compute by hand."""
    ours, theirs = pipelines
    window = resolve_schedule(steps)
    mine = ours([PROMPT] * FRAMES, num_inference_steps=steps, guidance_scale=7.5, rvm_period=math.inf,
                rvm_blocks="all", dsf=False, generator=torch.Generator().manual_seed(0), output_type="latent")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs(PROMPT, video_length=FRAMES, num_inference_steps=steps, guidance_scale=7.5,
                           t0=window.t0, t1=window.t1, motion_field_strength_x=0.0, motion_field_strength_y=0.0,
                           generator=torch.Generator().manual_seed(0), output_type="latent").images
    assert (mine - reference).abs().max().item() < TOLERANCE


def test_motion_actually_moves_frames(pipelines):
    still, _ = run_both(pipelines, "latent", (0.0, 0.0))
    moving, _ = run_both(pipelines, "latent", (64.0, -40.0))
    assert torch.equal(still[0], moving[0])  # frame 1 is never warped and only attends to itself
    assert not torch.equal(still[1:], moving[1:])


@pytest.mark.parametrize("size", [(8, 8), (9, 16), (64, 64), (600, 520)])
@pytest.mark.parametrize("strength", [(12.0, 12.0), (3.7, -21.3), (1000.0, -700.0)])
def test_translation_matches_text2video_zero_warp(size, strength):
    latents = torch.randn(4, 4, *size, generator=torch.Generator().manual_seed(0))
    frame_ids = [1, 2, 5, 9]  # global frame indices, not positions in the batch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = t2vz.create_motion_field_and_warp_latents(*strength, frame_ids, latents)
    assert torch.equal(translate_latents(latents, frame_ids, *strength), expected)
