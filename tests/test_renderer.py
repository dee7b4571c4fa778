"""The renderer on the tiny SD-shaped model: outputs, determinism, schedule wiring, the RVM processor."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from safetensors.torch import load_file

from direct2v.bundled.tiny_models import build_tiny_sd
from direct2v.render.attention import RotationalValueMappingProcessor, install_rvm
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.reference import FrameReference
from direct2v.render.rvm import rvm_reference_frame

FAST = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
PROMPTS = ["a red fox runs across a snowy field", "the fox stops and looks up", "the fox jumps into the snow"]


@pytest.fixture(scope="module")
def model_dir(tiny_sd_dir):
    return tiny_sd_dir  # the conftest's tiny SD (seed 0); ``pipe`` is it loaded


def render(pipe, prompts, seed=0, **kwargs):
    return pipe(prompts, generator=torch.Generator().manual_seed(seed), **{**FAST, **kwargs})


def processor_types(pipe) -> dict[str, type]:
    return {name: type(processor) for name, processor in pipe.unet.attn_processors.items()}


# --- the tiny model -------------------------------------------------------------------------------


def test_tiny_model_is_deterministic_and_sd_shaped(model_dir, tmp_path):
    again = build_tiny_sd(tmp_path / "again")
    other = build_tiny_sd(tmp_path / "other", seed=1)
    weights = "unet/diffusion_pytorch_model.safetensors"
    first, second, third = (load_file(path / weights) for path in (model_dir, again, other))
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], third[key]) for key in first)
    assert (again / "tokenizer" / "vocab.json").read_bytes() == (model_dir / "tokenizer" / "vocab.json").read_bytes()
    assert {"up_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.weight"} <= set(first)


def test_tokenizer_counts_ordinary_english_realistically(pipe):
    tokenizer = pipe.tokenizer
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A red fox runs across a snowy field at dawn.").input_ids
    assert len(ids) == 13  # <start> + 10 words + "." + <end>: common words are single tokens
    assert len(tokenizer("a xylophonist").input_ids) > 4  # rare words fall apart into sub-words


def test_overlong_prompts_are_reported(pipe, caplog):
    long_prompt = " ".join(["a red fox runs across a snowy field"] * 12)
    with caplog.at_level("WARNING", logger="direct2v.render.pipeline"):
        embeddings = pipe.encode_prompts(["a cat", long_prompt])
    assert embeddings.shape == (2, 77, 32)
    assert "truncated to 77 of its" in caplog.text


# --- the pipeline ---------------------------------------------------------------------------------


def test_frames_shape_dtype_and_range(pipe):
    frames = render(pipe, PROMPTS)
    assert frames.shape == (3, 64, 64, 3)
    assert frames.dtype == np.float32
    assert np.isfinite(frames).all() and frames.min() >= 0.0 and frames.max() <= 1.0
    assert frames.std() > 0.01  # not a blank image


def test_latent_output_and_non_native_size(pipe):
    latents = render(pipe, PROMPTS[:2], output_type="latent", height=72, width=128)
    assert latents.shape == (2, 4, 9, 16)


def test_single_frame(pipe):
    assert render(pipe, PROMPTS[:1]).shape == (1, 64, 64, 3)


def test_same_seed_is_bit_identical_and_seed_matters(pipe):
    first, second = render(pipe, PROMPTS), render(pipe, PROMPTS)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, render(pipe, PROMPTS, seed=1))


def test_frame_prompts_are_honoured(pipe):
    same = render(pipe, [PROMPTS[0]] * 3)
    varied = render(pipe, PROMPTS)
    for frame in (1, 2):
        assert np.abs(same[frame] - varied[frame]).max() > 1e-3
    assert np.abs(varied[1] - varied[2]).max() > 1e-3


def test_rotation_alone_changes_the_video(pipe):
    """RVM differs from Text2Video-Zero only through the frame it rotates the reference to: a period
    longer than the joint pass never leaves frame 1 and gives T2V-Z's video bit for bit, while
    period 3 moves it (frames 1, 2, 3 in turn) and changes every frame."""
    t2v_zero = render(pipe, PROMPTS, rvm_period=math.inf)
    assert np.array_equal(render(pipe, PROMPTS, rvm_period=100), t2v_zero)
    rotated = render(pipe, PROMPTS, rvm_period=3)
    assert [np.array_equal(rotated[i], t2v_zero[i]) for i in range(len(PROMPTS))] == [False] * len(PROMPTS)


def test_no_guidance_runs_without_cfg_batch(pipe):
    assert render(pipe, PROMPTS, guidance_scale=1.0).shape == (3, 64, 64, 3)


def test_processors_are_restored_even_after_an_error(pipe):
    before = processor_types(pipe)
    render(pipe, PROMPTS[:2], rvm_blocks="all")
    assert processor_types(pipe) == before

    def fail(done, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        render(pipe, PROMPTS[:2], progress=fail)
    assert processor_types(pipe) == before


def test_unet_calls_see_the_right_prompts_and_reference_frames(pipe):
    """Frame 1 alone uses its own (negative, positive) pair; the joint pass gets [neg x F, pos_0..pos_F-1]
    and the reference frame of rvm_reference_frame(step since the joint pass began)."""
    calls = []

    def spy(module, args, kwargs):
        rvm = next(p for p in module.attn_processors.values() if isinstance(p, RotationalValueMappingProcessor))
        calls.append((kwargs["encoder_hidden_states"].clone(), args[0].shape[0], rvm.state.index))

    progress = []
    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        render(pipe, PROMPTS, rvm_period=2, negative_prompt="blurry", progress=lambda d, n: progress.append((d, n)))
    finally:
        handle.remove()

    negative, *positives = pipe.encode_prompts(["blurry", *PROMPTS])
    alone, joint = calls[: -FAST["t1"] - 1], calls[-FAST["t1"] - 1 :]
    assert len(alone) == 11 - 9 + (8 - 6)  # PNDM: 11 timesteps for 10 steps; then t1 -> t0
    for context, batch, index in alone:
        assert batch == 2 and index == 0
        assert torch.equal(context, torch.stack([negative, positives[0]]))
    for step, (context, batch, index) in enumerate(joint):
        assert batch == 6
        assert torch.equal(context, torch.stack([negative] * 3 + positives))
        assert index == rvm_reference_frame(step, 3, 2)
    assert [index for _, _, index in joint] == [0, 1, 1, 2, 2, 0, 0, 1, 1]  # t' = 1..9, m = 2
    assert progress == [(i, len(calls)) for i in range(1, len(calls) + 1)]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"frame_prompts": []}, "non-empty"),
        ({"frame_prompts": ["a", "  "]}, "bad frames"),
        ({"t0": 8, "t1": 8}, "t0 < t1"),
        ({"t1": 10}, "t1 < num_inference_steps"),
        ({"t0": -1}, "0 <= t0"),
        ({"height": 60}, "multiples of 8"),
        ({"rvm_blocks": "down"}, "rvm_blocks"),
        ({"rvm_period": 0}, "period"),
        ({"output_type": "pil"}, "output_type"),
        ({"motion_strength_x": math.nan}, "finite"),
    ],
)
def test_invalid_arguments_raise(pipe, kwargs, message):
    arguments = {"frame_prompts": PROMPTS, **FAST, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe(**arguments)


def test_from_local_dir_reports_what_is_missing(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        DirecT2VPipeline.from_local_dir(tmp_path / "nowhere")
    broken = shutil.copytree(model_dir, tmp_path / "broken")
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.rmtree(broken / "scheduler")
    with pytest.raises(FileNotFoundError, match="unet/diffusion_pytorch_model.safetensors.*scheduler/"):
        DirecT2VPipeline.from_local_dir(broken)


# --- the attention processor ----------------------------------------------------------------------


def reference_attention(attn: Attention, hidden: torch.Tensor, frames: int, groups: int, ref: int) -> torch.Tensor:
    """softmax(Q_f K_r^T / sqrt(d)) V_r written out, frame by frame and head by head."""
    query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    heads, dim = attn.heads, query.shape[-1] // attn.heads
    outputs = []
    for b in range(hidden.shape[0]):
        r = (b // frames) * frames + ref  # the reference frame of b's CFG group
        per_head = []
        for h in range(heads):
            q, k, v = (x[i, :, h * dim : (h + 1) * dim] for x, i in ((query, b), (key, r), (value, r)))
            weights = torch.softmax(q @ k.T / math.sqrt(dim), dim=-1)
            per_head.append(weights @ v)
        outputs.append(torch.cat(per_head, dim=-1))
    return attn.to_out[0](torch.stack(outputs))


@pytest.mark.parametrize("groups, ref", [(2, 0), (2, 2), (1, 1)])
def test_rvm_processor_matches_explicit_attention(groups, ref):
    torch.manual_seed(0)
    frames, tokens, channels = 3, 10, 32
    attn = Attention(query_dim=channels, heads=4, dim_head=8).eval()
    hidden = torch.randn(groups * frames, tokens, channels)
    attn.set_processor(RotationalValueMappingProcessor(FrameReference(index=ref, cfg_groups=groups)))
    with torch.no_grad():
        ours = attn(hidden)
        expected = reference_attention(attn, hidden, frames, groups, ref)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_rvm_processor_leaves_cross_attention_alone():
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=4, dim_head=8).eval()
    hidden, text = torch.randn(6, 10, 32), torch.randn(6, 7, 16)
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        plain = attn(hidden, encoder_hidden_states=text)
        attn.set_processor(RotationalValueMappingProcessor(FrameReference(index=2)))
        ours = attn(hidden, encoder_hidden_states=text)
    assert torch.equal(ours, plain)


def test_rvm_processor_rejects_bad_batches():
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    with torch.no_grad():
        attn.set_processor(RotationalValueMappingProcessor(FrameReference(index=3, cfg_groups=2)))
        with pytest.raises(IndexError):
            attn(torch.randn(6, 10, 32))  # 3 frames per group, reference 3
        attn.set_processor(RotationalValueMappingProcessor(FrameReference(index=0, cfg_groups=2)))
        with pytest.raises(ValueError):
            attn(torch.randn(5, 10, 32))


def test_install_rvm_targets(pipe):
    before = pipe.unet.attn_processors
    try:
        install_rvm(pipe.unet, "up", FrameReference())
        chosen = {name for name, kind in processor_types(pipe).items() if kind is RotationalValueMappingProcessor}
        assert all(name.startswith(("up_blocks.2.", "up_blocks.3.")) and ".attn1." in name for name in chosen)
        assert len(chosen) == 4  # 2 transformer layers per up block in the tiny model
        assert set(processor_types(pipe).values()) == {RotationalValueMappingProcessor, AttnProcessor2_0}
        install_rvm(pipe.unet, "all", FrameReference())
        assert set(processor_types(pipe).values()) == {RotationalValueMappingProcessor}
        with pytest.raises(ValueError):
            install_rvm(pipe.unet, "down", FrameReference())
    finally:
        pipe.unet.set_attn_processor(dict(before))
