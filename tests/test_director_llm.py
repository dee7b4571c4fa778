"""The REAL vLLM engine on the bundled SmolLM2-135M-Instruct: a batch planned at F=8 and one
FPS-doubling round to F=16; every plan valid or recorded as failed with a reason; lineage correct;
the cache answers a repeated request without the engine."""

import pytest

from direct2v.config import DirectorSettings
from direct2v.plan import FramePlan, PlanFailure, TokenBudget, lineage, validate_frames
from direct2v.prompts import PromptRecord

pytestmark = pytest.mark.llm

PROMPTS = [
    "A corgi is running and another corgi joins later",
    "Rain falls from a cloudy sky and then a rainbow appears",
    "Dolphins leap out of a calm ocean one after another",
]


@pytest.fixture(scope="module")
def director(smollm2_dir, tiny_sd_dir, tmp_path_factory):
    from direct2v.director import Director

    settings = DirectorSettings(model_dir=smollm2_dir, max_attempts=2)
    state = tmp_path_factory.mktemp("state")
    with Director(settings, state_dir=state, budget=TokenBudget.from_sd_model(tiny_sd_dir)) as loaded:
        yield loaded


def test_batch_with_one_fps_doubling(director, tiny_sd_dir):
    budget = TokenBudget.from_sd_model(tiny_sd_dir)
    records = [PromptRecord(id=f"p{i}", prompt=p) for i, p in enumerate(PROMPTS)]
    records.append(PromptRecord(id="short", prompt="A red ball rolls across a table", frames=3, fps=1, seed=5))
    results = director.plan(records, frames=8, fps=1, seed=11, fps_doublings=1)

    assert [r.prompt_id for r in results] == ["p0", "p1", "p2", "short"]
    for result in results:
        if isinstance(result, PlanFailure):
            assert result.reason and result.attempts >= 1
            continue
        first_frames = 3 if result.prompt_id == "short" else 8
        assert [len(r.frames) for r in result.rounds] == [first_frames, 2 * first_frames]
        assert [r.fps for r in result.rounds] == ([1, 2])
        assert result.rounds[0].parents == [] and result.rounds[1].parents == lineage(2 * first_frames)
        assert result.frames == result.rounds[1].frames and result.fps == 2
        assert validate_frames(result.frames, 2 * first_frames, budget) == []
        assert result.seed == (5 if result.prompt_id == "short" else 11)
        assert result.template_version == "v1" and result.director_model == "smollm2-135m-instruct"
    assert any(isinstance(r, FramePlan) for r in results), [getattr(r, "reason", "") for r in results]
    report = director.report.as_dict()
    assert report["prompts"] == 4 and report["accepted_final"] + report["failed"] == 4
    assert report["valid_final"] <= report["accepted_final"] and report["valid_first_try"] <= report["usable_first_try"]
    calls = report["engine_calls"]  # first round, then the doubling round (each with any repair turns)
    assert len(calls) >= 2 and calls[0]["answers"] == 4 and all(c["tokens"] > 0 for c in calls)


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
