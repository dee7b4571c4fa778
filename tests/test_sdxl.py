"""Bring your own model: SD 2.x and SDXL directories run the same method as SD 1.x.

Tiny random-weight models shaped like SD 2.1 (v-prediction, linear projections) and SDXL 1.0 base
(two text encoders, text-time conditioning), built and saved here with ``save_pretrained`` and
loaded back with ``from_pretrained`` (``direct2v.bundled.tiny_models``).

The oracle is the one of tests/test_oracle.py, against diffusers' own pipelines: with one prompt
for every frame, the reference pinned to frame 0 on every attention layer and DSF off, our render
must be ``TextToVideoZeroPipeline``'s (SD 2.x) and ``TextToVideoZeroSDXLPipeline``'s (SDXL). Both of
diffusers' pipelines run the directory's registered scheduler; ours renders with PNDM (the paper's
sampler, built from that scheduler's config), so theirs is given the same PNDM. Measured on this
CPU: the latents are bit-identical; the decoded frames differ by < 1e-6 (SDXL: diffusers decodes
in one VAE call and post-processes through its image processor).
"""

from __future__ import annotations

import json
import math
import shutil
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import summary_of
from diffusers import PNDMScheduler

import direct2v.render.attention
import direct2v.render.cpu_kernels
from direct2v.bundled.tiny_models import build_tiny_lora
from direct2v.core.config import Settings
from direct2v.director.plan import FramePlan, write_plan
from direct2v.render.attention import RotationalValueMappingProcessor, default_rvm_blocks, rvm_layer_names
from direct2v.render.model_dir import SD, SDXL, ModelDirError, check_model_dir, read_architecture
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.pipeline_xl import DirecT2VXLPipeline
from direct2v.render.renderer import load_pipeline
from direct2v.render.sampling import SCHEDULERS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
        TextToVideoZeroPipeline,
    )
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero_sdxl import (
        TextToVideoZeroSDXLPipeline,
    )

TOLERANCE = 1e-5  # as tests/test_oracle.py: a different BLAS blocking may move a few ulps, nothing more
PROMPT = "a red fox runs across a snowy field"
SCHEDULE = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
FRAMES = 4
PROMPTS = ["a red fox runs", "the fox stops", "the fox looks up", "the fox jumps", "snow falls"]
FAMILIES = ["sdxl", "sd2"]


@pytest.fixture(scope="module")
def model_dirs(tiny_sdxl_dir, tiny_sd2_dir):
    return {"sdxl": tiny_sdxl_dir, "sd2": tiny_sd2_dir}


@pytest.fixture(scope="module")
def pipes(model_dirs):
    return {family: load_pipeline(path) for family, path in model_dirs.items()}


@pytest.fixture(scope="module")
def theirs(model_dirs):
    """diffusers' Text2Video-Zero pipelines on the same directories, with our PNDM."""
    loaded = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded["sdxl"] = TextToVideoZeroSDXLPipeline.from_pretrained(model_dirs["sdxl"], local_files_only=True)
        loaded["sd2"] = TextToVideoZeroPipeline.from_pretrained(model_dirs["sd2"], safety_checker=None,
                                                                local_files_only=True)
    for pipeline in loaded.values():
        pipeline.scheduler = PNDMScheduler.from_config(pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
    return loaded


def run_both(pipes, theirs, family: str, output_type: str, motion: tuple[float, float]):
    mine = pipes[family](
        [PROMPT] * FRAMES, rvm_period=math.inf, rvm_blocks="all", dsf=False, motion_strength_x=motion[0],
        motion_strength_y=motion[1], generator=torch.Generator().manual_seed(0),
        output_type="latent" if output_type == "latent" else "np", **SCHEDULE,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = theirs[family](
            PROMPT, video_length=FRAMES, motion_field_strength_x=motion[0], motion_field_strength_y=motion[1],
            generator=torch.Generator().manual_seed(0), output_type=output_type, **SCHEDULE,
        ).images
    return mine, np.asarray(reference) if output_type == "np" else reference


# --- what a directory is -------------------------------------------------------------------------


def test_the_architecture_is_read_from_model_index(tiny_sd_dir, model_dirs, pipes):
    assert read_architecture(tiny_sd_dir) is SD and read_architecture(model_dirs["sd2"]) is SD
    assert read_architecture(model_dirs["sdxl"]) is SDXL
    assert type(pipes["sdxl"]) is DirecT2VXLPipeline and type(pipes["sd2"]) is DirecT2VPipeline
    assert pipes["sd2"].scheduler.config.prediction_type == "v_prediction"  # the model's own, kept
    assert pipes["sdxl"].config.force_zeros_for_empty_prompt is True


@pytest.mark.parametrize("class_name", ["FluxPipeline", "StableDiffusion3Pipeline", "PixArtAlphaPipeline",
                                        "StableDiffusionXLImg2ImgPipeline"])
def test_an_unsupported_pipeline_is_one_line_naming_what_is_supported(tmp_path, class_name):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": class_name, "transformer": ["a", "b"]}))
    with pytest.raises(ModelDirError) as error:
        check_model_dir(tmp_path)
    message = str(error.value)
    assert class_name in message and "StableDiffusionXLPipeline (SDXL)" in message and "\n" not in message


def test_a_directory_without_model_index_or_with_a_bad_one_is_named(tmp_path):
    with pytest.raises(ModelDirError, match="has no model_index.json"):
        check_model_dir(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="cannot be read as a diffusers model index"):
        check_model_dir(tmp_path)


def test_an_sdxl_directory_without_its_second_encoder_names_the_missing_files(tiny_sdxl_dir, tmp_path):
    broken = shutil.copytree(tiny_sdxl_dir, tmp_path / "sdxl")
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(FileNotFoundError) as error:
        load_pipeline(broken)
    assert "Stable Diffusion XL" in str(error.value)
    assert "text_encoder_2/config.json" in str(error.value) and "text_encoder_2/model.safetensors" in str(error.value)


def test_each_pipeline_class_loads_its_own_architecture_only(tiny_sd_dir, tiny_sdxl_dir):
    with pytest.raises(ModelDirError, match="is a Stable Diffusion XL model; DirecT2VPipeline renders"):
        DirecT2VPipeline.from_local_dir(tiny_sdxl_dir)
    with pytest.raises(ModelDirError, match="DirecT2VXLPipeline renders Stable Diffusion XL"):
        DirecT2VXLPipeline.from_local_dir(tiny_sd_dir)


# --- the oracle ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("motion", [(0.0, 0.0), (64.0, -40.0)])
def test_latents_equal_text2video_zero(pipes, theirs, family, motion):
    mine, reference = run_both(pipes, theirs, family, "latent", motion)
    assert mine.shape == reference.shape == (FRAMES, 4, 8, 8)
    assert (mine - reference).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_frames_equal_text2video_zero(pipes, theirs, family):
    mine, reference = run_both(pipes, theirs, family, "np", (0.0, 0.0))
    assert mine.shape == reference.shape == (FRAMES, 64, 64, 3)
    assert np.abs(mine - reference).max() < TOLERANCE


def test_sdxl_conditioning_is_both_encoders_the_pooled_output_and_the_size(pipes):
    """What the UNet receives per frame: [penultimate states of encoder 1 | of encoder 2], encoder 2's
    projected pooled output, time ids (H, W, 0, 0, H, W); an empty negative prompt is zeros."""
    pipe, seen = pipes["sdxl"], []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        pipe(["a fox", "a hare"], height=48, width=64, generator=torch.Generator().manual_seed(0), **SCHEDULE)
    finally:
        handle.remove()
    joint = seen[-1]  # [negative frames 0-1, positive frames 0-1]
    hidden, added = joint["encoder_hidden_states"], joint["added_cond_kwargs"]
    assert hidden.shape == (4, 77, 64) and added["text_embeds"].shape == (4, 32)
    assert added["time_ids"].tolist() == [[48, 64, 0, 0, 48, 64]] * 4
    assert not hidden[:2].any() and not added["text_embeds"][:2].any()  # force_zeros_for_empty_prompt
    ids = [tokenizer(["a hare"], padding="max_length", max_length=77, return_tensors="pt").input_ids
           for tokenizer in (pipe.tokenizer, pipe.tokenizer_2)]
    with torch.no_grad():  # alone, not in the render's batch of texts: equal up to BLAS blocking
        first = pipe.text_encoder(ids[0], output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(ids[1], output_hidden_states=True)
    torch.testing.assert_close(hidden[3], torch.cat([first, second.hidden_states[-2]], dim=-1)[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(added["text_embeds"][3], second.text_embeds[0], rtol=0, atol=1e-6)
    with_negative = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, a, k: with_negative.append(k), with_kwargs=True)
    try:
        pipe(["a fox"], negative_prompt="blurry", generator=torch.Generator().manual_seed(0), **SCHEDULE)
    finally:
        handle.remove()
    assert with_negative[0]["encoder_hidden_states"][0].any()  # a negative prompt given is encoded


# --- the method on the other architectures ---------------------------------------------------------


def test_the_default_rvm_blocks_are_the_highest_resolution_up_blocks_with_attention(pipes, tiny_sd_dir):
    sd1 = load_pipeline(tiny_sd_dir)
    assert default_rvm_blocks(sd1.unet) == default_rvm_blocks(pipes["sd2"].unet) == ("up_blocks.2", "up_blocks.3")
    assert default_rvm_blocks(pipes["sdxl"].unet) == ("up_blocks.0", "up_blocks.1")
    layers = rvm_layer_names(pipes["sdxl"].unet, "up")
    assert layers and all(name.startswith(("up_blocks.0.", "up_blocks.1.")) and ".attn1." in name for name in layers)
    assert len(layers) == 2 * 2 + 2 * 1  # two attentions per up block, of 2 and 1 transformer layers
    named = rvm_layer_names(pipes["sdxl"].unet, ("mid_block", "up_blocks.1"))
    assert {name.split(".attentions.")[0] for name in named} == {"mid_block", "up_blocks.1"}
    with pytest.raises(ValueError, match="no self-attention layers in 'up_blocks.2'; blocks that have them: "
                                         "down_blocks.1, down_blocks.2, mid_block, up_blocks.0, up_blocks.1"):
        rvm_layer_names(pipes["sdxl"].unet, ("up_blocks.2",))


@pytest.mark.parametrize("family", FAMILIES)
def test_rvm_acts_on_the_chosen_blocks_and_per_frame_prompts_change_the_frames(pipes, family):
    pipe, seen = pipes[family], set()
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(name for name, p in module.attn_processors.items()
                                                  if isinstance(p, RotationalValueMappingProcessor)), with_kwargs=True)
    try:
        story = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **SCHEDULE)
    finally:
        handle.remove()
    assert seen == set(rvm_layer_names(pipe.unet, "up"))
    same = pipe([PROMPTS[0]] * len(PROMPTS), generator=torch.Generator().manual_seed(0), **SCHEDULE)
    assert story.shape == (5, 64, 64, 3) and np.isfinite(story).all()
    assert np.array_equal(story, pipe(PROMPTS, generator=torch.Generator().manual_seed(0), **SCHEDULE))
    assert all(not np.array_equal(story[i], same[i]) for i in range(1, len(PROMPTS)))


@pytest.mark.parametrize("family", FAMILIES)
def test_infinite_period_chunked_equals_unchunked(pipes, family):
    """m = inf: every frame attends to frame 1 only, so sections around cached anchors change nothing."""
    options = {**SCHEDULE, "rvm_period": math.inf, "dsf": False, "motion_strength_x": 30.0, "output_type": "latent"}
    prompts = PROMPTS + ["the fox runs away", "snow falls on the empty field"]
    whole = pipes[family](prompts, batch_size=8, generator=torch.Generator().manual_seed(0), **options)
    chunked = pipes[family](prompts, batch_size=2, generator=torch.Generator().manual_seed(0), **options)
    assert (chunked - whole).abs().max().item() <= 1e-5 * whole.abs().max().item()  # batch-shape rounding only


@pytest.mark.parametrize("family", FAMILIES)
def test_every_sampler_renders(pipes, family):
    videos = {}
    for name in SCHEDULERS:
        steps = 6 if name == "lcm" else 10
        latents = pipes[family](PROMPTS[:3], scheduler=name, num_inference_steps=steps, guidance_scale=7.5,
                                generator=torch.Generator().manual_seed(0), output_type="latent")
        assert latents.shape == (3, 4, 8, 8) and torch.isfinite(latents).all(), name
        videos[name] = latents
    assert len({tuple(v.flatten()[:16].tolist()) for v in videos.values()}) == len(SCHEDULERS)  # all different


@pytest.mark.parametrize("family", FAMILIES)
def test_dsf_runs_and_its_fused_and_blockwise_paths_agree(pipes, family, monkeypatch):
    prompts = PROMPTS + ["the fox runs away"]
    options = {**SCHEDULE, "batch_size": 2, "output_type": "latent"}  # chunked, with CFG
    plain = pipes[family](prompts, dsf=False, generator=torch.Generator().manual_seed(0), **options)
    calls_before = direct2v.render.cpu_kernels.STATS["calls"]
    one_pass = pipes[family](prompts, generator=torch.Generator().manual_seed(0), **options)
    monkeypatch.setenv(direct2v.render.cpu_kernels.SWITCH, "0")
    monkeypatch.setattr(direct2v.render.attention, "attention_with_lse", lambda *args, **kwargs: None)
    blockwise = pipes[family](prompts, generator=torch.Generator().manual_seed(0), **options)
    assert direct2v.render.cpu_kernels.STATS["calls"] > calls_before or not direct2v.render.cpu_kernels.available()
    assert not torch.equal(one_pass, plain)  # the filter sent some queries back to their own frame
    assert (one_pass - blockwise).abs().max() < 1e-4 * blockwise.abs().max()


def test_an_sdxl_lora_is_fused_into_the_unet(tiny_sdxl_dir, tmp_path):
    lora = build_tiny_lora(tiny_sdxl_dir, tmp_path / "lora", seed=3)
    pipe = load_pipeline(tiny_sdxl_dir)
    before = {name: p.clone() for name, p in pipe.unet.named_parameters() if name.endswith("attn1.to_q.weight")}
    pipe.fuse_local_lora(lora)
    changed = [name for name, p in pipe.unet.named_parameters() if name in before and not torch.equal(p, before[name])]
    assert changed == list(before)
    assert torch.isfinite(pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(0), output_type="latent",
                               **SCHEDULE)).all()


def test_an_fp16_sdxl_vae_decodes_in_float32_when_its_config_says_force_upcast(tiny_sdxl_dir):
    pipe = load_pipeline(tiny_sdxl_dir)
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    full = pipe.decode(latents)
    pipe.vae.to(torch.float16)
    seen = []
    handle = pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    try:
        upcast = pipe.decode(latents.half())
    finally:
        handle.remove()
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16  # decoded in fp32, then back
    assert np.abs(upcast - full).max() < 1e-2  # only the weights' fp16 rounding differs


# --- the job -------------------------------------------------------------------------------------


@pytest.mark.flow
@pytest.mark.parametrize("family, architecture", [("sdxl", "sdxl"), ("sd2", "sd")])
def test_direct2v_run_renders_with_the_model_given_by_set(model_dirs, smollm2_dir, tmp_path, run_cli, family,
                                                          architecture):
    """``direct2v run`` on a run whose plans exist (so no director starts), with --set
    render.model_dir=<tiny SDXL or SD 2.x>: videos, rows, and the row names the architecture."""
    settings = Settings(frames=3, fps=2, output_root=tmp_path / "outputs", director={"model_dir": smollm2_dir})
    run_dir = tmp_path / "outputs" / "own-model-run"
    run_dir.mkdir(parents=True)
    (run_dir / "settings.json").write_text(settings.model_dump_json())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a fox, take {i}", "seed": i}) + "\n"
                               for i in range(2)))
    for i in range(2):
        write_plan(FramePlan(prompt_id=f"p{i}", prompt=f"a fox, take {i}", fps=2, seed=i,
                             frames=["a red fox sits", "the fox stands up", "the fox runs"]), run_dir / "plans")
    done = run_cli(["run", prompts, "--resume", run_dir, "--set", f"render.model_dir={model_dirs[family]}",
                    "--set", "render.num_inference_steps=6", "--set", "render.t0=3", "--set", "render.t1=4"],
                   {}, cwd=tmp_path)
    summary = summary_of(done)
    assert summary["ok"] == 2, done.stderr[-3000:]
    rows = pq.read_table(run_dir / "manifest.parquet").to_pylist()
    assert {row["render_architecture"] for row in rows} == {architecture}
    assert all(row["render_model"].startswith(f"{model_dirs[family].name}@") for row in rows)
    assert all((run_dir / row["video_path"]).stat().st_size > 0 for row in rows)


def test_rvm_blocks_naming_a_block_without_attention_stops_the_job_before_any_model_loads(tiny_sdxl_dir, tmp_path,
                                                                                          run_cli):
    write_plan(FramePlan(prompt_id="p", prompt="a fox", fps=2, seed=0, frames=["a fox", "a fox runs"]),
               tmp_path / "plans")
    done = run_cli(["render", "--plans", tmp_path / "plans", "--out", tmp_path / "run", "--set",
                    f"render.model_dir={tiny_sdxl_dir}", "--set", "render.rvm_blocks=up_blocks.1,up_blocks.2"],
                   {}, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert ("render.rvm_blocks: up_blocks.2 hold no attention layers in" in done.stderr
            and "blocks that do: down_blocks.1, down_blocks.2, mid_block, up_blocks.0, up_blocks.1" in done.stderr)
    assert not (tmp_path / "run").exists()


def test_models_check_says_what_a_directory_is_and_whether_it_runs(tiny_sdxl_dir, tiny_sd2_dir, tmp_path, run_cli):
    done = run_cli(["models", "check", tiny_sdxl_dir], {})
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == f"{tiny_sdxl_dir}: Stable Diffusion XL (StableDiffusionXLPipeline)"
    assert "native size     64 px" in done.stdout and "'up' = up_blocks.0, up_blocks.1" in done.stdout
    assert any(line.split()[:1] == ["text_encoder_2"] and "F32 x37" in line for line in lines)
    assert lines[-1].split() == ["will", "run", "yes"]

    report = json.loads(run_cli(["models", "check", tiny_sd2_dir, "--json"], {}).stdout)
    assert (report["runs"], report["architecture"], report["prediction_type"]) == (True, "sd", "v_prediction")
    unet = next(c for c in report["components"] if c["name"] == "unet")
    assert unet["parameters"] == sum(p.numel() for p in load_pipeline(tiny_sd2_dir).unet.parameters())

    broken = shutil.copytree(tiny_sdxl_dir, tmp_path / "broken")
    (broken / "tokenizer_2" / "merges.txt").unlink()
    (broken / "tokenizer_2" / "tokenizer.json").unlink()
    flux = tmp_path / "flux"
    flux.mkdir()
    (flux / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": ["diffusers", "x"]}')
    for path, reason in ((broken, "will not run    missing tokenizer_2/tokenizer.json or merges.txt"),
                         (flux, "will not run    " + f"{flux} is a FluxPipeline, which this renderer does not run")):
        done = run_cli(["models", "check", path], {})
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert done.stdout.splitlines()[-1].startswith("  " + reason), done.stdout
