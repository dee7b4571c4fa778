"""The REAL vLLM engine on the bundled SmolLM2-135M-Instruct: every plan it returns is valid, or
the prompt is recorded as failed with a reason."""

import pytest

from direct2v.config import DirectorSettings
from direct2v.plan import FramePlan, PlanFailure, validate_frames
from direct2v.prompts import PromptRecord

pytestmark = pytest.mark.llm

PROMPTS = [
    "A corgi is running and another corgi joins later",
    "Rain falls from a cloudy sky and then a rainbow appears",
    "Dolphins leap out of a calm ocean one after another",
]


def test_real_engine_plans_a_batch(smollm2_dir, tmp_path):
    from direct2v.director import Director

    records = [PromptRecord(id=f"p{i}", prompt=p) for i, p in enumerate(PROMPTS)]
    records.append(PromptRecord(id="short", prompt="A red ball rolls across a table", frames=3, fps=1, seed=5))
    settings = DirectorSettings(model_dir=smollm2_dir, max_attempts=2)
    with Director(settings, state_dir=tmp_path) as director:
        results = director.plan(records, frames=4, fps=2, seed=11)

    assert [r.prompt_id for r in results] == ["p0", "p1", "p2", "short"]
    planned = [r for r in results if isinstance(r, FramePlan)]
    assert planned, "the bundled model should plan at least one of these prompts"
    for result in results:
        if isinstance(result, PlanFailure):
            assert result.reason and result.attempts == 2
            continue
        expected = 3 if result.prompt_id == "short" else 4
        assert validate_frames(result.frames, expected) == []
        assert result.director_model == smollm2_dir.name and result.template_version == "v1"
        assert result.rounds[-1].frames == result.frames
        assert result.seed == (5 if result.prompt_id == "short" else 11)
        assert result.fps == (1 if result.prompt_id == "short" else 2)
