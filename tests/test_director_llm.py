"""The REAL vLLM engine on the bundled SmolLM2-135M-Instruct: a batch planned at F=8, another at
F=4 with one FPS-doubling round to F=8 (template v2: the doubled round keeps the first round's frames); every
plan valid or recorded as failed with a reason; lineage correct; the example prompts get clean
plans; v1 still plans; the cache answers a repeated request without the engine."""

import pytest
import torch
from conftest import state_lock

from direct2v.core.config import DirectorSettings
from direct2v.director.plan import FramePlan, PlanFailure, TokenBudget, lineage, validate_frames
from direct2v.director.prompts import PromptRecord

pytestmark = pytest.mark.llm

PROMPTS = [
    "A corgi is running and another corgi joins later",
    "Rain falls from a cloudy sky and then a rainbow appears",
    "Dolphins leap out of a calm ocean one after another",
]


@pytest.fixture(scope="module")
def director(smollm2_dir, tiny_sd_dir, tmp_path_factory):
    from direct2v.director.director import Director

    settings = DirectorSettings(model_dir=smollm2_dir, max_attempts=2)
    state = tmp_path_factory.mktemp("state")
    with state_lock("vllm"), Director(settings, state_dir=state,
                                      budget=TokenBudget.from_sd_model(tiny_sd_dir)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def three_requests(director):
    """Three engine calls every test below reads (the engine is slow on a CPU: each call once):
    ``first``, the example prompts and one more at F=8; ``between``, another request (a batch at F=4 with
    one FPS-doubling round, and its report); ``again``, the first request once more. The plan
    cache is bypassed, so every call reaches the engine (whose prefix cache stays on)."""
    prompts = [*PROMPTS, "A red ball rolls across a table"]
    records = [PromptRecord(id=f"e{i}", prompt=p) for i, p in enumerate(prompts)]
    batch = [PromptRecord(id=f"p{i}", prompt=p) for i, p in enumerate(PROMPTS)]
    batch.append(PromptRecord(id="short", prompt="A red ball rolls across a table", frames=3, fps=1, seed=5))
    cache, director.cache = director.cache, None
    try:
        first = director.plan(records, frames=8, fps=2, seed=0)
        director.cache = cache  # (reconfigure keeps a cache only where there is one)
        director.reconfigure(director.settings)  # the same engine and settings, a fresh report for ``between``
        director.cache = None
        between = director.plan(batch, frames=4, fps=1, seed=11, fps_doublings=1)
        between_report = director.report.as_dict()
        again = director.plan(records, frames=8, fps=2, seed=0)
    finally:
        director.cache = cache
    return {"records": records, "first": first, "between": between, "between_report": between_report, "again": again}


def test_batch_with_one_fps_doubling(three_requests, tiny_sd_dir):
    budget = TokenBudget.from_sd_model(tiny_sd_dir)
    results = three_requests["between"]

    assert [r.prompt_id for r in results] == ["p0", "p1", "p2", "short"]
    for result in results:
        if isinstance(result, PlanFailure):
            assert result.reason and result.attempts >= 1
            continue
        first_frames = 3 if result.prompt_id == "short" else 4
        assert [len(r.frames) for r in result.rounds] == [first_frames, 2 * first_frames]
        assert [r.fps for r in result.rounds] == ([1, 2])
        assert result.rounds[0].parents == [] and result.rounds[1].parents == lineage(2 * first_frames)
        assert result.frames == result.rounds[1].frames and result.fps == 2
        assert validate_frames(result.frames, 2 * first_frames, budget) == []
        assert result.seed == (5 if result.prompt_id == "short" else 11)
        assert result.template_version == "v2" and result.director_model == "smollm2-135m-instruct"
        assert result.rounds[1].frames[0::2] == result.rounds[0].frames  # v2 keeps them, asks the ones between
        assert result.director_sampling["template_version"] == "v2" and result.director_sampling["presence_penalty"] == 1.0
    assert any(isinstance(r, FramePlan) for r in results), [getattr(r, "reason", "") for r in results]
    report = three_requests["between_report"]
    assert report["prompts"] == 4 and report["accepted_final"] + report["failed"] == 4
    assert report["valid_final"] <= report["accepted_final"] and report["valid_first_try"] <= report["usable_first_try"]
    calls = report["engine_calls"]  # first round, then the doubling round (each with any repair turns)
    # v2: one answer per frame (4 + 4 + 4 + 3) in the first call; the doubling round asks the 15 between
    assert len(calls) >= 2 and calls[0]["answers"] == 15 and all(c["tokens"] > 0 for c in calls)
    assert 15 in [c["answers"] for c in calls[1:]]


def test_the_example_prompts_get_clean_plans(three_requests):
    """What a new user sees first (prompts_in/examples.txt): every frame its own, on the subject, no
    loop, none restating the prompt, and neighbouring frames alike but not the same."""
    from direct2v.director.quality import measure_plan

    records, results = three_requests["records"][:len(PROMPTS)], three_requests["first"][:len(PROMPTS)]
    for record, result in zip(records, results, strict=True):
        assert isinstance(result, FramePlan), result.reason
        quality = measure_plan(result.frames, record.prompt, 8)
        assert quality.clean and result.warnings == [], (result.frames, result.warnings)
        assert quality.progression >= 0.5, result.frames


def test_the_same_request_gets_the_same_plans_again(director, three_requests):
    """Greedy first answers and seeded repair samples: the same request asked of the engine again,
    after another (the plan cache bypassed, the engine's prefix cache not), gives the same frames.
    On CPU that takes float32 (``engine_dtype``): in bfloat16 most of these plans came back
    different the second time."""
    first, between, again = three_requests["first"], three_requests["between"], three_requests["again"]
    assert director.sampling()["dtype"] == ("bfloat16" if torch.cuda.is_available() else "float32")
    assert len(between) == 4 and all(isinstance(result, FramePlan) for result in first + again)
    assert [r.frames for r in again] == [r.frames for r in first]


def test_v1_the_papers_single_request_still_plans(director):
    v1 = director.settings.model_copy(update={"template_version": "v1", "max_attempts": 1})
    v2 = director.settings
    director.reconfigure(v1)
    try:
        result = director.plan([PromptRecord(id="v1", prompt=PROMPTS[0])], frames=4, fps=2, seed=0)[0]
        report = director.report.as_dict()
    finally:
        director.reconfigure(v2)
    assert report["prompts"] == 1 and len(report["engine_calls"]) == 1 and report["engine_calls"][0]["answers"] == 1
    if isinstance(result, FramePlan):
        assert result.template_version == "v1" and len(result.frames) == 4 and result.attempts == 1
    else:
        assert result.reason and result.raw_output
    with pytest.raises(ValueError, match="need a new engine: max_model_len"):
        director.reconfigure(v2.model_copy(update={"max_model_len": 4096}))


def test_cache_answers_a_repeated_request(director):
    records = [PromptRecord(id="first", prompt=PROMPTS[0])]
    first = director.plan(records, frames=4, fps=2, seed=0)[0]
    cached_before = director.report.cached
    again = director.plan([PromptRecord(id="again", prompt=PROMPTS[0])], frames=4, fps=2, seed=0)[0]
    if isinstance(first, FramePlan):
        assert director.report.cached == cached_before + 1
        assert again.prompt_id == "again" and again.frames == first.frames
    else:  # failures are not cached: the request is planned again
        assert director.report.cached == cached_before


def test_the_samples_of_a_prompt_are_different_plans_asked_in_one_call(director):
    from direct2v.director.prompts import sample_records

    samples = sample_records(PromptRecord(id="dolphins", prompt=PROMPTS[2]), 3, seed=0)  # (not planned at F=4 before)
    director.reconfigure(director.settings)  # a fresh report
    results = director.plan(samples, frames=4, fps=2, seed=0)
    assert all(isinstance(result, FramePlan) for result in results), [getattr(r, "reason", "") for r in results]
    assert len({tuple(result.frames) for result in results}) == 3  # three storylines, not one three times
    report = director.report.as_dict()
    assert report["cached"] == 0 and report["engine_calls"][0]["answers"] == 3 * 4  # v2: a request per frame, one call
    assert [r.director_sampling["sample"] for r in results] == [0, 1, 2]
    assert {r.director_sampling["sample_of"] for r in results} == {"dolphins"}
