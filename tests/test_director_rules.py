"""Director rules without an engine: quality rules, answer judging, lineage, token budget, cache."""

import pytest

from direct2v.director import SCHEMA_FRAME_CHARS, DirectorReport, PlanCache, frame_chars_limit, judge_answer
from direct2v.plan import FramePlan, PlanRound, TokenBudget, lineage, quality_problems, validate_frames
from direct2v.prompts import PromptRecord

PROMPT = "A corgi runs in a park"


def test_quality_rules():
    assert quality_problems(["a corgi sits", "a corgi stands", "a corgi runs"], PROMPT) == {}
    found = quality_problems(["A corgi runs in a park.", "a corgi stands", "a corgi stands"], PROMPT)
    assert set(found) == {"repeats_prompt", "adjacent_identical"}
    assert "frames [1]" in found["repeats_prompt"] and "frames [2]" in found["adjacent_identical"]
    assert set(quality_problems(["a corgi sits", "A corgi sits.", "a corgi sits"], PROMPT)) == {"static_video"}
    assert set(quality_problems([PROMPT] * 3, PROMPT)) == {"repeats_prompt", "static_video"}
    found = quality_problems(["The corgi**", "a corgi stands up", ",", "a corgi runs off"], PROMPT)
    assert set(found) == {"too_short"} and "frames [1, 3]" in found["too_short"]


def test_judge_answer_separates_hard_and_quality_problems():
    frames, broken = judge_answer('["a corgi sits", "a corgi runs"]', 2, PROMPT, None)
    assert frames == ["a corgi sits", "a corgi runs"] and broken == {}
    frames, broken = judge_answer('["a corgi sits"]', 2, PROMPT, None)
    assert frames is None and "exactly 2" in broken["hard"]
    frames, broken = judge_answer(f'["{PROMPT}", "{PROMPT}"]', 2, PROMPT, None)
    assert frames is not None and set(broken) == {"repeats_prompt", "static_video"}


def test_token_budget_uses_the_sd_tokenizer(tiny_sd_dir):
    budget = TokenBudget.from_sd_model(tiny_sd_dir)
    assert budget.limit == 77
    assert budget.count("a corgi") < budget.count("a corgi runs across a wide green park at noon")
    long = " ".join(["corgi"] * 45)  # 269 characters, but ~90 tokens
    problems = validate_frames(["short", long], 2, budget)
    assert len(problems) == 1 and "frame 2 has" in problems[0] and "more than the 77" in problems[0]
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        TokenBudget.from_sd_model(tiny_sd_dir / "nowhere")


def test_safe_chars_follows_the_tokenizers_characters_per_token():
    words = lambda text: len(text.split()) + 2  # one token per word, plus BOS/EOS
    halves = lambda text: len(text) // 2 + 2  # two characters per token
    reference = ["a corgi runs fast"]  # 17 characters
    assert TokenBudget(words, limit=6).safe_chars(reference, margin=1.0) == int(4 * 17 / 4)
    assert TokenBudget(halves, limit=77).safe_chars(reference, margin=1.0) == int(75 * 17 / 8)
    assert TokenBudget(halves, limit=77).safe_chars(reference, margin=0.5) == int(75 * 17 / 8 * 0.5)
    # the densest reference decides: "a b c d" is 7 characters in 4 words
    assert TokenBudget(words, limit=6).safe_chars([*reference, "a b c d"], margin=1.0) == int(4 * 7 / 4)


def test_schema_length_fits_the_renderers_tokenizer(tiny_sd_dir):
    budget = TokenBudget.from_sd_model(tiny_sd_dir)
    cap = frame_chars_limit(budget)
    assert frame_chars_limit(None) == SCHEMA_FRAME_CHARS
    # the tiny vocabulary packs ~2 characters per token, so 200 characters would not fit 77 tokens
    assert 60 < cap < SCHEMA_FRAME_CHARS
    description = ("a corgi with a red collar runs across the sunny park while a second corgi joins " * 4)[:cap]
    assert budget.count(description) <= budget.limit
    generous = TokenBudget(lambda text: len(text) // 5 + 2, limit=77)  # like SD's CLIP BPE on English
    assert frame_chars_limit(generous) == SCHEMA_FRAME_CHARS


def plan_with_rounds(rounds):
    return FramePlan(prompt_id="p", prompt="x", fps=rounds[-1].fps, seed=0, frames=rounds[-1].frames, rounds=rounds)


def test_lineage_is_validated():
    first = PlanRound(fps=1, frames=["a", "b"])
    second = PlanRound(fps=2, frames=["a1", "a2", "b1", "b2"], parents=lineage(4))
    assert plan_with_rounds([first, second]).rounds[1].parents == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="parents"):
        plan_with_rounds([first, second.model_copy(update={"parents": [0, 1, 0, 1]})])
    with pytest.raises(ValueError, match="double"):
        plan_with_rounds([first, PlanRound(fps=2, frames=["a1", "a2", "b1"], parents=lineage(3))])


def test_plan_cache_round_trip(tmp_path):
    cache = PlanCache(tmp_path, model="m@1")
    plan = FramePlan(prompt_id="first", prompt="x", fps=2, seed=0, frames=["a", "b"])
    key = {"prompt": "x", "frames": 2}
    assert cache.get(key, PromptRecord(id="again", prompt="x")) is None
    cache.put(key, plan)
    again = cache.get(key, PromptRecord(id="again", prompt="x"))
    assert again.prompt_id == "again" and again.frames == ["a", "b"]
    assert PlanCache(tmp_path, model="m@2").get(key, PromptRecord(id="z", prompt="x")) is None
    assert cache.get({**key, "frames": 3}, PromptRecord(id="z", prompt="x")) is None


def test_report_rates():
    report = DirectorReport(prompts=4, cached=0, valid_first_try=1, usable_first_try=3, valid_final=2,
                            accepted_final=3, failed=1)
    report.first_try_rules.update({"repeats_prompt": 2, "hard": 1})
    rates = report.as_dict()
    assert rates["valid_rate_first_try"] == 0.25 and rates["usable_rate_first_try"] == 0.75
    assert rates["valid_rate_final"] == 0.5 and rates["accepted_rate_final"] == 0.75
    assert rates["rule_rates_first_try"] == {"hard": 0.25, "repeats_prompt": 0.5}


@pytest.mark.parametrize("cores, setting, expected", [(2, None, "0"), (1, None, "0"), (16, None, None), (2, 1, "1")])
def test_cpu_engine_threads_get_every_core_on_small_machines(monkeypatch, tmp_path, cores, setting, expected):
    import os

    from direct2v.config import DirectorSettings
    from direct2v.director import configure_vllm_environment

    environment = {}
    monkeypatch.setattr(os, "environ", environment)  # nothing leaks into this process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    configure_vllm_environment(DirectorSettings(cpu_reserved_cores=setting), tmp_path)
    assert environment.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == expected
    assert environment["VLLM_HOST_IP"] == "127.0.0.1" and environment["VLLM_CPU_KVCACHE_SPACE"] == "1"
