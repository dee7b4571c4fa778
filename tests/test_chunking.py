"""Cached-attention chunking (paper §4.3): the plan, the virtual-batch schedule, the anchor cache,
the processor reading it, and chunked rendering on the tiny model with its memory measured."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from direct2v.render.attention import RotationalValueMappingProcessor
from direct2v.render.reference import AnchorKVCache, FrameReference
from direct2v.render.rvm import ChunkPlan, cached_anchor_steps, chunk_plan, reference_schedule, rvm_reference_frame

FAST = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
JOINT_STEPS = FAST["t1"] + 1


def prompts(count: int) -> list[str]:
    actions = ["runs", "stops", "looks up", "jumps", "lands", "shakes off the snow"]
    return [f"a red fox {actions[i % len(actions)]} in a snowy field, frame {i + 1}" for i in range(count)]


# --- the plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [2, 3, 4, 5, 8, 9, 16])
def test_chunk_plan_for_many_sizes(batch_size):
    for frames in range(1, 70):
        plan = chunk_plan(frames, batch_size)
        covered = [*plan.anchors, *(f for section in plan.sections for f in section)]
        assert covered == list(range(frames))  # every frame exactly once, in order
        if frames <= batch_size:
            assert plan == ChunkPlan(anchors=range(frames), sections=())
            continue
        half = batch_size // 2
        assert plan.anchors == range(half)
        assert all(1 <= len(section) <= half for section in plan.sections)
        assert all(len(section) == half for section in plan.sections[:-1])  # only the last may be short
        assert len(plan.sections) == math.ceil((frames - half) / half)
        for s in range(len(plan.sections)):
            virtual = plan.virtual_batch(s)
            assert len(virtual) <= batch_size and virtual[:half] == tuple(range(half))


def test_chunk_plan_examples():
    assert chunk_plan(24, 8).sections == (range(4, 8), range(8, 12), range(12, 16), range(16, 20), range(20, 24))
    assert chunk_plan(11, 8).sections == (range(4, 8), range(8, 11))
    assert chunk_plan(9, 8).sections == (range(4, 8), range(8, 9))
    assert chunk_plan(3, 2) == ChunkPlan(anchors=range(1), sections=(range(1, 2), range(2, 3)))
    assert chunk_plan(24, 8).virtual_batch(1) == (0, 1, 2, 3, 8, 9, 10, 11)


@pytest.mark.parametrize("frames, batch_size", [(0, 8), (-1, 8), (4, 1), (4, 0), (4, 2.0), (4, True), (2.0, 4)])
def test_chunk_plan_validates(frames, batch_size):
    with pytest.raises(ValueError):
        chunk_plan(frames, batch_size)


# --- the schedule over the virtual batch --------------------------------------------------------


def section_schedules(plan: ChunkPlan, steps: int, period: float) -> list[list[int]]:
    sizes = [plan.num_anchors + len(section) for section in plan.sections]
    return [reference_schedule(steps, size, "rotational", period) for size in sizes]


@pytest.mark.parametrize("frames, batch_size", [(24, 8), (11, 8), (26, 8), (9, 4), (17, 5), (7, 2)])
@pytest.mark.parametrize("period", [1, 4, math.inf])
def test_virtual_references_are_anchors_in_the_cache_or_section_frames(frames, batch_size, period):
    plan = chunk_plan(frames, batch_size)
    schedules = section_schedules(plan, 96, period)
    wanted = cached_anchor_steps(schedules, plan.num_anchors)
    for s, (section, schedule) in enumerate(zip(plan.sections, schedules)):
        virtual = plan.virtual_batch(s)
        for step, reference in enumerate(schedule):
            assert reference == rvm_reference_frame(step, len(virtual), period)
            frame = virtual[reference]  # the global frame every frame of the section attends to
            if reference < plan.num_anchors:
                assert frame in plan.anchors and (step, reference) in wanted
            else:
                assert frame in section
    # the cache keeps nothing no section reads
    assert wanted == {(t, r) for sched in schedules for t, r in enumerate(sched) if r < plan.num_anchors}


def test_cached_anchor_steps_do_not_grow_with_the_video():
    for period in (1, 4, math.inf):
        sets = [cached_anchor_steps(section_schedules(chunk_plan(f, 8), 96, period), 4) for f in (24, 48, 400)]
        assert sets[0] == sets[1] == sets[2]
        uneven = [cached_anchor_steps(section_schedules(chunk_plan(f, 8), 96, period), 4) for f in (26, 50, 402)]
        assert uneven[0] == uneven[1] == uneven[2]
        assert len(uneven[0]) <= 2 * 96  # at most one anchor per step per distinct section length
    # m = 4, B = 8 (the paper's): anchors are referenced in half of the 96 steps, one anchor each
    expected = {(t, ((t + 1) // 4) % 8) for t in range(96) if ((t + 1) // 4) % 8 < 4}  # t' = t + 1
    assert cached_anchor_steps(section_schedules(chunk_plan(24, 8), 96, 4), 4) == expected
    assert len(expected) == 48
    assert cached_anchor_steps(section_schedules(chunk_plan(24, 8), 96, math.inf), 4) == {(t, 0) for t in range(96)}


def test_reference_schedule_modes():
    assert reference_schedule(6, 3, "rotational", 2) == [0, 1, 1, 2, 2, 0]  # t' = 1..6
    draws = reference_schedule(50, 5, "random", generator=torch.Generator().manual_seed(3))
    assert draws == reference_schedule(50, 5, "random", generator=torch.Generator().manual_seed(3))
    assert set(draws) == set(range(5))
    with pytest.raises(ValueError, match="generator"):
        reference_schedule(5, 3, "random")
    with pytest.raises(ValueError, match="mode"):
        reference_schedule(5, 3, "sideways")
    with pytest.raises(ValueError):
        reference_schedule(-1, 3)


# --- the anchor cache ----------------------------------------------------------------------------


def record_pass(cache: AnchorKVCache, key: torch.Tensor, value: torch.Tensor, steps: int) -> None:
    """Record ``key + step`` / ``value - step`` at every step, as the anchor pass's layers do."""
    state = FrameReference(cfg_groups=key.shape[0], record_to=cache)
    for step in range(steps):
        state.point_to(0, step)
        cache.record("layer", key + step, value - step, state.record_slots)


def test_cache_records_only_wanted_pairs_as_own_copies():
    cache = AnchorKVCache({(2, 0), (2, 2), (5, 1)}, num_anchors=3)
    key, value = torch.randn(2, 3, 4, 16, 8), torch.randn(2, 3, 4, 16, 8)  # (groups, anchors, heads, tokens, d)
    record_pass(cache, key, value, steps=7)
    assert len(cache) == 3
    for step, anchor in cache.wanted:
        k, v = cache.entry("layer", step, anchor)
        assert torch.equal(k, key[:, anchor] + step) and torch.equal(v, value[:, anchor] - step)
    # the cache's own buffers (not views of the batch): 3 wanted slots + 3 scratch slots, key and value
    assert cache.nbytes == 2 * (3 + 3) * (2 * 4 * 16 * 8 * 4)
    cache.check_complete()
    with pytest.raises(RuntimeError, match="cache miss"):
        cache.entry("layer", 3, 0)
    with pytest.raises(RuntimeError, match="cache miss"):
        cache.load("another layer", torch.tensor([0]))
    with pytest.raises(ValueError, match="exactly the 3 anchors"):
        cache.record("layer", key[:, :2], value[:, :2], torch.tensor([0, 1]))


def test_cache_slot_rows_send_unwanted_anchors_to_scratch():
    cache = AnchorKVCache({(2, 0), (2, 2), (5, 1)}, num_anchors=3)
    rows = cache.slot_rows(torch.device("cpu"))
    scratch = [3, 4, 5]
    assert rows.tolist() == [scratch, scratch, [0, 4, 1], scratch, scratch, [3, 2, 5], scratch]
    assert rows.dtype == torch.int64


def test_cache_reports_an_incomplete_anchor_pass():
    cache = AnchorKVCache({(0, 0), (1, 0)}, num_anchors=1)
    with pytest.raises(RuntimeError, match="recorded nothing"):
        cache.check_complete()
    with pytest.raises(ValueError, match="outside"):
        AnchorKVCache({(0, 3)}, num_anchors=2)
    with pytest.raises(RuntimeError, match="step 4, anchor 0 was not recorded"):
        FrameReference(cfg_groups=1, anchors=cache).point_to(0, 4)  # a section asks for an unwanted pair


# --- the processor on a virtual batch ------------------------------------------------------------


@pytest.mark.parametrize("reference", [0, 1, 2, 4])  # anchors 0-1 (cached), section frames 2-4
@pytest.mark.parametrize("groups", [1, 2])
def test_section_with_cached_anchors_equals_the_whole_virtual_batch(reference, groups):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    anchors, section, tokens = 2, 3, 10
    anchor_hidden = torch.randn(groups, anchors, tokens, 32)
    section_hidden = torch.randn(groups, section, tokens, 32)
    cache = AnchorKVCache({(7, reference)} if reference < anchors else set(), num_anchors=anchors)
    state = FrameReference(cfg_groups=groups, record_to=cache)
    attn.set_processor(RotationalValueMappingProcessor(state, layer="up_blocks.3.attn1"))
    with torch.no_grad():
        state.point_to(0, 7)
        attn(anchor_hidden.flatten(0, 1))  # the anchor pass
        state.record_to, state.anchors = None, cache
        state.point_to(reference, 7)
        ours = attn(section_hidden.flatten(0, 1)).view(groups, section, tokens, 32)
        # the same virtual batch held whole in one batch, without any cache
        state.anchors = None
        state.point_to(reference, 7)
        whole = attn(torch.cat([anchor_hidden, section_hidden], dim=1).flatten(0, 1))
    assert torch.allclose(ours, whole.view(groups, anchors + section, tokens, 32)[:, anchors:], atol=1e-6)


def test_section_reference_outside_the_virtual_batch_raises():
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    cache = AnchorKVCache(set(), num_anchors=2)
    attn.set_processor(RotationalValueMappingProcessor(FrameReference(index=5, cfg_groups=1, anchors=cache)))
    with torch.no_grad(), pytest.raises(IndexError, match="2 cached \\+ 3 frames"):
        attn(torch.randn(3, 10, 32))


# --- chunked rendering on the tiny model ---------------------------------------------------------


def spy_render(pipe, frames: int, **kwargs):
    """Render and record, for every UNet call: (batch, reference, step, cached anchors?, cache bytes held)."""
    calls, shared = [], []

    def spy(module, args, kwargs_):
        if not shared:  # one state object serves every RVM layer for the whole call
            processors = module.attn_processors.values()
            shared.extend(p.state for p in processors if isinstance(p, RotationalValueMappingProcessor))
        state = shared[0]
        cache = state.anchors or state.record_to
        calls.append((args[0].shape[0], state.index, state.step, state.anchors is not None,
                      cache.nbytes if cache is not None else 0))

    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        out = pipe(prompts(frames), generator=torch.Generator().manual_seed(0), **{**FAST, **kwargs})
    finally:
        handle.remove()
    return out, calls


@pytest.fixture(scope="module")
def chunked_24_and_48(pipe):
    return {frames: spy_render(pipe, frames, batch_size=8, output_type="latent") for frames in (24, 48)}


def test_chunked_render_produces_every_frame(chunked_24_and_48):
    for frames, (latents, calls) in chunked_24_and_48.items():
        assert latents.shape == (frames, 4, 8, 8) and torch.isfinite(latents).all()
        assert len({tuple(frame.flatten()[:8].tolist()) for frame in latents}) == frames  # all distinct
        alone = len(calls) - JOINT_STEPS * (1 + len(chunk_plan(frames, 8).sections))
        assert alone == 4  # frame 1's own passes run once for the whole video


def test_chunked_render_follows_the_virtual_batch_schedule(chunked_24_and_48):
    _, calls = chunked_24_and_48[24]
    plan = chunk_plan(24, 8)
    joint = calls[4:]
    passes = [joint[i : i + JOINT_STEPS] for i in range(0, len(joint), JOINT_STEPS)]
    assert len(passes) == 1 + len(plan.sections)
    for batch, index, step, reading, _ in passes[0]:  # anchors rotate among themselves and record
        assert batch == 2 * 4 and not reading and index == rvm_reference_frame(step, 4, 4)
    for section, calls_of_section in zip(plan.sections, passes[1:]):
        for batch, index, step, reading, _ in calls_of_section:
            assert batch == 2 * len(section) and reading
            assert index == rvm_reference_frame(step, 4 + len(section), 4)
    assert max(batch for batch, *_ in calls) <= 2 * 8  # no UNet call beyond B frames per CFG half


def test_anchor_cache_memory_is_bounded_as_the_video_grows(chunked_24_and_48, capsys):
    peak = {frames: max(held for *_, held in calls) for frames, (_, calls) in chunked_24_and_48.items()}
    with capsys.disabled():
        print(f"\nanchor cache bytes: F=24 -> {peak[24]}, F=48 -> {peak[48]}")
    assert peak[24] > 0
    assert peak[48] == peak[24]  # twice the frames, the same cache
    # and it is no more than the anchors' K/V at the steps that read them: 9 (step, anchor) pairs here
    # (m = 4, joint steps 0-8 all point at anchors 0-2 of the virtual batch of 8), 4 RVM layers
    _, calls = chunked_24_and_48[24]
    sections_held = {held for *_, reading, held in calls if reading}
    assert sections_held == {peak[24]}  # constant while the sections read it


def test_infinite_period_chunked_equals_unchunked(pipe):
    """With m = inf every frame attends only to frame 1, so chunking must not change any frame
    (up to float rounding from different batch shapes), motion by global frame index included."""
    options = {"rvm_period": math.inf, "dsf": False, "motion_strength_x": 30.0, "motion_strength_y": -10.0,
               "output_type": "latent"}
    chunked, _ = spy_render(pipe, 11, batch_size=4, **options)
    whole, _ = spy_render(pipe, 11, batch_size=16, **options)
    scale = whole.abs().max().item()
    assert (chunked - whole).abs().max().item() <= 1e-6 * scale + 1e-6


def test_uneven_chunked_render_is_deterministic_and_rotation_matters(pipe):
    progress = []
    first, calls = spy_render(pipe, 11, batch_size=8, progress=lambda done, total: progress.append((done, total)))
    second, _ = spy_render(pipe, 11, batch_size=8)  # anchors 0-3, sections 4-7 and 8-10; DSF on
    assert first.shape == (11, 64, 64, 3) and np.isfinite(first).all()
    assert progress == [(i, len(calls)) for i in range(1, len(calls) + 1)] and len(calls) == 4 + 3 * JOINT_STEPS
    assert np.array_equal(first, second)
    assert [batch for batch, *_ in calls[-JOINT_STEPS:]] == [2 * 3] * JOINT_STEPS
    unchunked, _ = spy_render(pipe, 11, batch_size=16)
    assert not np.array_equal(first, unchunked)  # the rotation runs over other frames when chunked


def test_random_value_mapping_in_chunks(pipe):
    def draw(seed):
        return spy_render(pipe, 9, batch_size=4, value_mapping="random", dsf=False, output_type="latent",
                          reference_generator=torch.Generator().manual_seed(seed))

    (first, calls), (second, _) = draw(5), draw(5)
    assert torch.equal(first, second)
    plan = chunk_plan(9, 4)
    generator = torch.Generator().manual_seed(5)
    expected = [reference_schedule(JOINT_STEPS, size, "random", generator=generator)
                for size in [2, *(2 + len(section) for section in plan.sections)]]
    assert [index for _, index, *_ in calls[4:]] == [i for schedule in expected for i in schedule]
