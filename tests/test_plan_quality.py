"""Plan-quality measures (direct2v.director.quality) on hand-made plans: clean, looping, restating,
off-topic, static, truncated, invalid."""

import pytest

from direct2v.director.quality import (
    measure_plan,
    on_topic,
    phrase_loop,
    restates_prompt,
    stem,
    subject_terms,
    summarise_plans,
)

PROMPT = "A corgi runs across a park and another corgi joins later"
CLEAN = [
    "A small corgi stands at the edge of a sunny park, ears up; wide shot.",
    "The corgi starts to run across the green grass of the park.",
    "The corgi runs past a wooden bench, its short legs a blur.",
    "A second corgi appears behind a tree at the far side of the park.",
    "The second corgi trots toward the first corgi across the lawn.",
    "Both corgis run side by side across the sunny park.",
    "The two corgis slow down near a pond at the end of the park.",
    "The two corgis sit together by the pond, tongues out; close-up.",
]


def test_a_clean_plan_is_clean():
    quality = measure_plan(CLEAN, PROMPT, 8)
    assert quality.valid and quality.clean
    assert quality.distinct == 8 and quality.adjacent_identical == 0.0
    assert quality.restating == 0 and quality.looping == 0 and quality.on_topic == 1.0
    # neighbouring frames share some content words but are never the same set
    assert 0.0 < quality.adjacent_similarity < 1.0 and quality.progression > 0.5
    assert 10 <= quality.words_per_frame <= 14


def test_a_looping_plan():
    looping = list(CLEAN)
    looping[3] = "The corgi is a corgi. The corgi is a corgi. The corgi is a corgi."
    quality = measure_plan(looping, PROMPT, 8)
    assert quality.looping == 1 and not quality.clean
    assert phrase_loop("The rainbow is a sight that is not a sight that is not a sight") == "a sight that is"
    assert phrase_loop("red red red balloons") == "red red red"
    # three words twice is clumsy prose, not a loop
    assert phrase_loop("The cat is watching the rain and the cat is mesmerised by it") is None


def test_a_plan_restating_the_prompt():
    restating = [PROMPT] * 2 + CLEAN[2:]
    quality = measure_plan(restating, PROMPT, 8)
    assert quality.restating == 2 and quality.distinct == 7 and quality.adjacent_identical == pytest.approx(1 / 7)
    assert not quality.clean
    # nearly the prompt's words (punctuation, articles, a plural) is still restating it
    assert restates_prompt("The corgi runs across the park, and another corgi joins later!", PROMPT)
    assert not restates_prompt(CLEAN[1], PROMPT)


def test_an_off_topic_plan():
    drifting = CLEAN[:4] + ["A dog collides with a bird.", "The air is filled with the scent of flowers."] + CLEAN[6:]
    quality = measure_plan(drifting, PROMPT, 8)
    assert quality.on_topic == pytest.approx(6 / 8) and not quality.clean
    # the caller's subject words (with synonyms) decide when given
    assert measure_plan(drifting, PROMPT, 8, subject={"corgi", "dog"}).on_topic == pytest.approx(7 / 8)


def test_static_invalid_and_truncated_plans():
    static = measure_plan(["A corgi sits in the park."] * 8, PROMPT, 8)
    assert static.distinct == 1 and static.adjacent_identical == 1.0 and static.progression == 0.0
    assert not static.clean
    assert not measure_plan(CLEAN[:7], PROMPT, 8).valid
    assert not measure_plan(None, PROMPT, 8).valid
    assert not measure_plan(CLEAN[:7] + [" "], PROMPT, 8).valid
    truncated = measure_plan(CLEAN, PROMPT, 8, truncated=True)
    assert truncated.valid and not truncated.clean


@pytest.mark.parametrize("prompt, subject", [
    ("A corgi is running and another corgi joins later", {"corgi"}),
    ("A hot air balloon rises over green hills at sunrise", {"balloon"}),
    ("Two kittens play with a ball of yarn", {"kitten"}),
    ("Two children play on a swing", {"children"}),
    ("Snow slowly covers a red car", {"snow"}),
    ("A butterfly lands on a sunflower", {"butterfly"}),
    ("An old man walks his bicycle up a street", {"man"}),
    ("The bus stops at a station", {"bus"}),
])
def test_subject_is_the_head_noun_before_the_first_verb(prompt, subject):
    assert subject_terms(prompt) == subject


def test_stems_match_plurals_and_verb_endings():
    assert stem("corgis") == stem("corgi") == "corgi"
    assert stem("puppies") == "puppy" and stem("runs") == "run"
    assert on_topic("Two kittens chase the yarn", subject_terms("A kitten plays with yarn"))
    assert on_topic("A rainbow over the wet field", {"rain"}) and not on_topic("A red carpet", {"car"})


def test_summary_counts_clean_plans_and_averages_valid_ones():
    qualities = [measure_plan(CLEAN, PROMPT, 8), measure_plan([PROMPT] * 8, PROMPT, 8), measure_plan(None, PROMPT, 8)]
    summary = summarise_plans(qualities)
    assert summary["plans"] == 3 and summary["clean"] == pytest.approx(1 / 3)
    assert summary["valid"] == pytest.approx(2 / 3)
    assert summary["distinct"] == pytest.approx((1.0 + 1 / 8) / 2)  # over the two valid plans
    assert summary["restating_plans"] == pytest.approx(1 / 3)
