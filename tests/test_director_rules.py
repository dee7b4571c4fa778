"""Director rules without an engine: quality rules, answer judging, lineage, token budget, cache."""

import json

import pytest

from direct2v.director.cache import PlanCache
from direct2v.director.instructions import (
    SCHEMA_FRAME_CHARS,
    copies_example,
    frame_chars_limit,
    frames_to_repair,
    judge_answer,
    parse_frame,
    worked_example,
)
from direct2v.director.plan import (
    FramePlan,
    PlanRound,
    TokenBudget,
    lineage,
    quality_findings,
    quality_problems,
    validate_frames,
)
from direct2v.director.prompts import PromptRecord
from direct2v.director.report import DirectorReport

PROMPT = "A corgi runs in a park"


def test_quality_rules():
    assert quality_problems(["a corgi sits", "a corgi stands", "a corgi runs"], PROMPT) == {}
    found = quality_problems(["A corgi runs in a park.", "a corgi stands", "a corgi stands"], PROMPT)
    assert set(found) == {"repeats_prompt", "adjacent_identical"}
    assert "frames [1]" in found["repeats_prompt"] and "frames [2]" in found["adjacent_identical"]
    assert set(quality_problems(["a corgi sits", "A corgi sits.", "a corgi sits"], PROMPT)) == {"static_video"}
    assert set(quality_problems([PROMPT] * 3, PROMPT)) == {"repeats_prompt", "static_video"}
    found = quality_problems(["The corgi**", "a corgi stands up", ",", "a corgi runs off"], PROMPT)
    assert set(found) == {"too_short", "off_topic"} and "frames [1, 3]" in found["too_short"]
    assert "frames [3]" in found["off_topic"] and "(corgi)" in found["off_topic"]


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

    from direct2v.core.config import DirectorSettings
    from direct2v.director.engine import configure_vllm_environment

    environment = {}
    monkeypatch.setattr(os, "environ", environment)  # nothing leaks into this process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    configure_vllm_environment(DirectorSettings(cpu_reserved_cores=setting), tmp_path)
    assert environment.get("VLLM_CPU_NUM_OF_RESERVED_CPU") == expected
    assert environment["VLLM_HOST_IP"] == "127.0.0.1" and environment["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_new_quality_rules_name_their_frames():
    frames = ["a corgi sits on the grass", "the corgi is a corgi. the corgi is a corgi. the corgi is a corgi",
              "a dog collides with a bird", "a corgi sits on the grass"]
    found = quality_findings(frames, PROMPT)
    assert found == {"phrase_loop": [2], "off_topic": [3], "repeated_frame": [4]}
    assert "(corgi)" in quality_problems(frames, PROMPT)["off_topic"]


def test_a_cut_off_answer_is_a_hard_problem():
    frames, broken = judge_answer('["a corgi sits", "a corgi runs"]', 2, PROMPT, None, finish_reason="length")
    assert frames is None and "cut off" in broken["hard"]
    assert parse_frame('"a corgi sits on', "length")[1].startswith("the answer was cut off")
    assert "error" in parse_frame("", "error")[1]
    assert parse_frame('"a  corgi\\nsits"') == ("a corgi sits", None)
    assert parse_frame('["a corgi sits"]')[1] == "the answer is not a non-empty JSON string"
    assert "not a JSON string" in parse_frame("a corgi sits")[1]


def test_frames_to_repair_asks_the_later_neighbour_and_never_a_kept_frame():
    frames = ["a corgi sits", "a corgi stands up", "a corgi stands up", "a corgi runs off"]
    assert frames_to_repair(frames, PROMPT, fixed=set()) == {2}
    # in a doubled round the kept frames (0, 2) are never asked again: the other of the pair is
    assert frames_to_repair(frames, PROMPT, fixed={0, 2}) == {1}
    assert frames_to_repair(["a corgi sits", "a dog barks", "a corgi runs"], PROMPT, fixed=set()) == {1}
    assert frames_to_repair(["a corgi sits", "a dog barks", "a corgi runs"], PROMPT, fixed={1}) == set()


def test_a_copied_example_frame_is_caught():
    example = worked_example()
    assert copies_example(example["frames"][3]) and copies_example(example["between"][5] + " Again.")
    assert not copies_example("A corgi runs across a sunny park toward a bench.")


def test_report_counts_warned_plans_apart():
    report = DirectorReport(prompts=4, accepted_final=3, valid_final=1, failed=1, answers=10, truncated=2)
    rates = report.as_dict()
    assert rates["accepted_with_warnings"] == 2 and rates["truncated"] == 2 and rates["answers"] == 10


def test_a_repaired_frame_keeps_the_first_candidate_that_breaks_no_rule():
    from direct2v.core.config import DirectorSettings
    from direct2v.director.director import Director
    from direct2v.director.instructions import COPIED_EXAMPLE
    from direct2v.director.v2 import FrameConversation

    director = object.__new__(Director)  # the selection needs no engine
    director.budget = None
    director._use(DirectorSettings())
    conversation = FrameConversation(record=PromptRecord(id="p", prompt=PROMPT), frames=3, fps=2, seed=0,
                                     current=["a corgi sits on the grass", "", "a corgi runs off"])
    pick = director.strategy._pick_frame  # template v2's
    copy = json.dumps(worked_example()["frames"][3])
    good = json.dumps("the corgi stands up in the park")
    restating = json.dumps("A corgi runs in a park.")
    picked = pick(conversation, 1, [(copy, "stop"), (restating, "stop"), (good, "stop")], set())
    assert picked == (good, "the corgi stands up in the park", None)
    # none passes the soft rules: the first usable one (it then carries a warning)
    assert pick(conversation, 1, [(copy, "stop"), (restating, "stop")], set())[1] == "A corgi runs in a park."
    # none is usable: the first answer's hard problem
    assert pick(conversation, 1, [(copy, "stop"), ('"cut', "length")], set()) == (copy, None, COPIED_EXAMPLE)


def test_reconfigure_keeps_the_engine_and_refuses_engine_settings():
    from direct2v.core.config import DirectorSettings
    from direct2v.director.director import Director

    director = object.__new__(Director)
    director.budget, director.cache = None, None
    director._use(DirectorSettings(cache=False))
    director.report = DirectorReport(prompts=3)
    director.reconfigure(DirectorSettings(template_version="v1", presence_penalty=0.5, cache=False))
    assert director.template == "v1" and director.presence_penalty == 0.5 and director.report.prompts == 0
    assert director.sampling()["template_version"] == "v1"
    with pytest.raises(ValueError, match="need a new engine: dtype"):
        director.reconfigure(DirectorSettings(dtype="float32"))


class _ScriptedEngine:
    """Stands in for vLLM's LLM: answers every chat with ``answer(chat, seed)``, counting calls."""

    def __init__(self, answer):
        self.answer, self.calls, self.params = answer, [], []

    def chat(self, chats, params, use_tqdm=False):
        from types import SimpleNamespace

        self.calls.append(len(chats))
        self.params.append(params)
        return [SimpleNamespace(outputs=[SimpleNamespace(text=self.answer(chat, p.seed), token_ids=[0] * 5,
                                                         finish_reason="stop")])
                for chat, p in zip(chats, params, strict=True)]


def _scripted_director(answer, **settings):
    from direct2v.core.config import DirectorSettings
    from direct2v.director.director import Director

    director = object.__new__(Director)
    director.budget, director.cache, director.model_name = None, None, "scripted"
    director._use(DirectorSettings(cache=False, **settings))
    director.llm = _ScriptedEngine(answer)
    return director


def test_v1_repairs_stop_when_the_answer_comes_back_unchanged():
    director = _scripted_director(lambda chat, seed: json.dumps([PROMPT, PROMPT]), template_version="v1", max_attempts=3)
    plan = director.plan([PromptRecord(id="p", prompt=PROMPT)], frames=2, fps=2, seed=0)[0]
    assert director.llm.calls == [1, 1]  # the repair got the same answer: no third call
    assert isinstance(plan, FramePlan) and plan.attempts == 2 and director.report.unchanged_repairs == 1
    assert {w.split(":")[0] for w in plan.warnings} == {"repeats_prompt", "static_video"}
    assert director.report.as_dict()["accepted_with_warnings"] == 1


def test_v2_asks_only_the_broken_frames_again_and_keeps_a_clean_candidate():
    def answer(chat, seed):
        asked = chat[-1]["content"]
        if "frame 2 of 3" in asked:
            return json.dumps(PROMPT if seed == 0 else "the corgi stops to sniff a flower")  # greedy restates
        return json.dumps("a corgi stands in the park" if "frame 1 of 3" in asked else "the corgi runs off")

    director = _scripted_director(answer, max_attempts=3)
    plan = director.plan([PromptRecord(id="p", prompt=PROMPT)], frames=3, fps=2, seed=0)[0]
    # three one-frame requests, then frame 2 alone with 4 sampled candidates (seeds 4-7 on attempt 2)
    assert director.llm.calls == [3, 4]
    assert plan.frames == ["a corgi stands in the park", "the corgi stops to sniff a flower", "the corgi runs off"]
    assert plan.warnings == [] and plan.template_version == "v2" and plan.director_sampling["repair_candidates"] == 4


def test_v2_doubling_keeps_the_frames_and_asks_the_ones_between():
    def answer(chat, seed):
        asked = chat[-1]["content"]
        if "halfway between them" in asked or "a moment after it" in asked:
            number = asked.split("description of frame ")[1].split(",")[0]
            return json.dumps(f"the corgi at moment {number} in the park")
        return json.dumps("a corgi sits in the park" if "frame 1 of 2" in asked else "a corgi runs in the grass")

    director = _scripted_director(answer)
    plan = director.plan([PromptRecord(id="p", prompt=PROMPT)], frames=2, fps=1, seed=0, fps_doublings=1)[0]
    assert director.llm.calls == [2, 2]
    assert plan.frames == ["a corgi sits in the park", "the corgi at moment 2 in the park",
                           "a corgi runs in the grass", "the corgi at moment 4 in the park"]
    assert plan.rounds[1].parents == lineage(4) and plan.fps == 2


def test_shapes_template_asks_the_whole_list_in_the_worlds_words_and_keeps_holding_frames():
    """A shape-world plan holds a cell for a few frames: identical neighbours are the story, not a
    fault (no repair turn, no warning); a doubling asks the whole list again at twice the frames."""
    held = ["a red circle on the left on a white background"] * 2 + ["a red circle on the right on a white background"] * 2

    def answer(chat, seed):
        asked = chat[-1]["content"]
        assert len(chat) == 1 and "shape world" in asked and "Prompt: a red ball rolls to the right" in asked
        return json.dumps(held if "four image descriptions" in asked else [f for f in held for _ in (0, 1)])

    director = _scripted_director(answer, template_version="shapes", max_attempts=3)
    plan = director.plan([PromptRecord(id="p", prompt="a red ball rolls to the right")], frames=4, fps=2, seed=0,
                         fps_doublings=1)[0]
    assert director.llm.calls == [1, 1]  # the first list, then the doubled one; no repair
    assert plan.warnings == [] and plan.template_version == "shapes" and plan.fps == 4
    assert [len(r.frames) for r in plan.rounds] == [4, 8] and plan.frames[-1] == held[-1]


def test_a_shapes_answer_that_breaks_a_hard_rule_is_repaired():
    answers = iter([json.dumps(["a red circle on the left"]), json.dumps(["a red circle on the left on a white background",
                                                                          "a red circle on the right on a white background"])])
    director = _scripted_director(lambda chat, seed: next(answers), template_version="shapes", max_attempts=2)
    plan = director.plan([PromptRecord(id="p", prompt="a red ball rolls to the right")], frames=2, fps=2, seed=0)[0]
    assert director.llm.calls == [1, 1] and isinstance(plan, FramePlan) and plan.attempts == 2


@pytest.mark.parametrize(("given", "expected"), [
    ({}, ("shape-world", ".state/models/smollm2-135m-storyline", "storyline")),
    ({"render": {"model_dir": "/models/sd15"}}, ("general", ".state/models/smollm2-135m-instruct", "v2")),
    ({"director": {"profile": "general"}}, ("general", ".state/models/smollm2-135m-instruct", "v2")),
    ({"director": {"template_version": "v1"}}, ("shape-world", ".state/models/smollm2-135m-storyline", "v1")),
    ({"render": {"model_dir": "/models/sd15"}, "director": {"profile": "shape-world", "model_dir": "/m/llm"}},
     ("shape-world", "/m/llm", "storyline")),
])
def test_the_director_profile_follows_the_renderer_and_what_the_user_set(given, expected):
    from direct2v.core.config import Settings, load_settings

    settings = load_settings(**given)
    director = settings.director
    assert (director.profile, str(director.model_dir), director.template_version) == expected
    again = Settings.model_validate(settings.model_dump())  # as a resumed run reads settings.json
    assert again.director == director


def test_the_plan_cache_key_changes_with_the_template_text(tmp_path):
    from direct2v.director.instructions import files_digest, templates_digest

    director = _scripted_director(lambda chat, seed: "[]")
    assert director._cache_key(PromptRecord(id="p", prompt="p"), 8, 2, 0, 0)["templates"] == templates_digest()
    template = tmp_path / "example_v2.json"
    template.write_text('{"prompt": "a snowman"}')
    before = files_digest([template])
    template.write_text('{"prompt": "a purple triangle"}')
    assert files_digest([template]) != before


def test_a_shape_world_model_anywhere_gets_the_shape_world_director(tmp_path):
    from direct2v.bundled.models import SHAPE_WORLD_WEIGHTS
    from direct2v.core.config import is_shape_world_model, load_settings

    assert is_shape_world_model(SHAPE_WORLD_WEIGHTS)  # by its TRAINING.json, wherever it is copied
    assert load_settings(render={"model_dir": SHAPE_WORLD_WEIGHTS}).director.profile == "shape-world"
    (tmp_path / "TRAINING.json").write_text('{"command": "accelerate launch train_text_to_image.py"}')
    assert not is_shape_world_model(tmp_path) and not is_shape_world_model(tmp_path / "missing")


# --- samples: several plans of one prompt -------------------------------------------------------


def shape_frames(*cells):
    return json.dumps([f"a red circle {cell} on a white background" for cell in cells])


def test_the_samples_of_a_prompt_go_out_in_one_call_sample_0_as_a_prompt_of_one_video():
    from direct2v.director.prompts import sample_records

    answers = {0: shape_frames("on the left", "on the right")}  # greedy (seed 0): sample 0
    director = _scripted_director(lambda chat, seed: answers.get(seed, shape_frames("at the top", f"seed {seed}")),
                                  template_version="shapes")
    record = PromptRecord(id="c", prompt="a red circle moves", seed=7)
    samples = sample_records(record, 3, seed=0)
    results = director.plan(samples, frames=2, fps=2, seed=0)
    assert director.llm.calls == [3]  # one batched call for the three samples
    params = director.llm.params[0]
    assert [p.temperature for p in params] == [0.0, 0.8, 0.8] and [p.top_p for p in params] == [1.0, 0.95, 0.95]
    assert len({p.seed for p in params}) == 3
    assert [r.prompt_id for r in results] == ["c-s0", "c-s1", "c-s2"] and [r.seed for r in results] == [
        7, *(s.seed for s in samples[1:])]
    assert len({tuple(r.frames) for r in results}) == 3
    sampling = [r.director_sampling for r in results]
    assert [(d["sample"], d["sample_of"]) for d in sampling] == [(0, "c"), (1, "c"), (2, "c")]
    assert "sample_seed" not in sampling[0] and sampling[1]["sample_seed"] == params[1].seed
    assert sampling[1]["sample_temperature"] == 0.8 and sampling[1]["redraws"] == 0

    alone = _scripted_director(lambda chat, seed: answers[seed], template_version="shapes")
    [plan] = alone.plan([record], frames=2, fps=2, seed=0)  # one video: as before samples existed
    assert plan.frames == results[0].frames and not {"sample", "sample_of"} & set(plan.director_sampling)
    key = alone._cache_key
    assert key(record, 2, 2, 7, 0) == key(samples[0], 2, 2, 7, 0) != key(samples[1], 2, 2, 7, 0)


def test_a_sample_that_repeats_an_earlier_one_is_drawn_again_then_kept_and_marked():
    from direct2v.director.prompts import sample_records

    def answer(chat, seed):
        if seed == 0:
            return shape_frames("on the left", "on the right")
        return shape_frames("at the top", "at the bottom") if len(director.llm.calls) == 1 else shape_frames(
            "in the center", f"seed {seed}")

    director = _scripted_director(answer, template_version="shapes")
    results = director.plan(sample_records(PromptRecord(id="c", prompt="a red circle moves"), 3, 0), 2, 2, 0)
    assert director.llm.calls == [3, 1]  # sample 2 repeated sample 1: drawn again, alone
    assert results[1].frames != results[2].frames and results[2].director_sampling["redraws"] == 1
    assert results[1].director_sampling["redraws"] == 0 and "repeats" not in results[2].director_sampling
    report = director.report.as_dict()
    assert (report["redraws"], report["repeated_samples"], report["valid_first_try"]) == (1, 0, 3)

    director = _scripted_director(lambda chat, seed: shape_frames("on the left", "at the top") if seed else
                                  shape_frames("on the left", "on the right"), template_version="shapes",
                                  sample_redraws=2)
    results = director.plan(sample_records(PromptRecord(id="c", prompt="a red circle moves"), 3, 0), 2, 2, 0)
    assert director.llm.calls == [3, 1, 1]  # sample 2 again and again: the draws are bounded
    assert results[2].director_sampling["repeats"] == "c-s1" and results[2].director_sampling["redraws"] == 2
    assert (director.report.redraws, director.report.repeated_samples) == (2, 1)


def test_the_storyline_template_writes_the_frames_from_the_storyline_and_doubles_without_asking_again():
    """Template storyline: the engine answers the story as JSON under the storyline schema; the frames
    are the story's ideal ones at the asked count, and a doubling cuts the same story finer."""
    from direct2v.shape_world.stories import Storyline, ideal_frames, storyline_schema

    story = {"background": "white", "objects": [
        {"colour": "red", "shape": "circle", "start": "left", "end": "right"},
        {"colour": "blue", "shape": "square", "start": "top left", "end": "top left", "enters": "later"}]}

    def answer(chat, seed):
        asked = chat[-1]["content"]
        assert len(chat) == 1 and "storyline as JSON" in asked and asked.endswith("Prompt: a red ball rolls right")
        return json.dumps(story)

    director = _scripted_director(answer, template_version="storyline", max_attempts=2)
    plan = director.plan([PromptRecord(id="p", prompt="a red ball rolls right")], frames=4, fps=2, seed=0,
                         fps_doublings=1)[0]
    assert director.llm.calls == [1]  # the doubling is written from the same storyline
    assert director.llm.params[0][0].structured_outputs.json == storyline_schema()
    expected = Storyline.model_validate(story)
    assert [r.frames for r in plan.rounds] == [ideal_frames(expected, 4), ideal_frames(expected, 8)]
    assert plan.frames[0] == "a red circle on the left on a white background"
    assert plan.frames[-1] == "a red circle on the right and a blue square in the top left corner on a white background"
    assert plan.rounds[1].parents == lineage(8) and plan.fps == 4 and plan.template_version == "storyline"


@pytest.mark.parametrize("bad", [
    '{"background": "white", "objects": []}',  # no object
    '{"background": "pink", "objects": [{"colour": "red", "shape": "circle", "start": "left", "end": "left"}]}',
    '{"background": "white", "objects": [{"colour": "red", "shape": "circle", "start": "nowhere", "end": "left"}]}',
    '["a red circle on the left on a white background"]',  # frames, not a storyline
])
def test_an_answer_that_is_not_a_storyline_is_repaired_then_fails_the_prompt(bad):
    director = _scripted_director(lambda chat, seed: bad, template_version="storyline", max_attempts=2)
    plan = director.plan([PromptRecord(id="p", prompt="a red ball rolls right")], frames=4, fps=2, seed=0)[0]
    assert director.llm.calls == [1, 1]
    assert not isinstance(plan, FramePlan) and "not a storyline" in plan.reason and plan.attempts == 2
