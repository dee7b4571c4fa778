"""The shape director's training examples (direct2v/director/shape_data.py), without any model:
seeded, every kind, prompts naming the story's colours and never a benchmark prompt, answers that
are the benchmark's perfect plans."""

from __future__ import annotations

import json
from collections import Counter

import jsonschema
import numpy as np
import pytest

from direct2v.director.instructions import shape_instruction_text, storyline_instruction_text
from direct2v.evaluation import shapes
from direct2v.evaluation import storylines as sl
from direct2v.director import shape_data as dd
from direct2v.shape_world import stories as st
from direct2v.shape_world import story_prompts as sp

EXAMPLES = dd.examples(400, seed=11)


def test_the_same_seed_gives_the_same_examples():
    assert dd.examples(60, seed=11) == EXAMPLES[:60]
    assert [e.story.prompt for e in dd.examples(60, seed=12)] != [e.story.prompt for e in EXAMPLES[:60]]


def test_every_kind_and_frame_count_is_drawn_and_eight_frames_most():
    kinds = Counter(e.story.kind for e in EXAMPLES)
    assert set(kinds) == set(st.KINDS)
    assert min(kinds.values()) >= 25
    only = dd.examples(40, seed=3, kind_weights={"two_moving": 1.0})  # the training setting kind_weights
    assert {e.story.kind for e in only} == {"two_moving"}
    twice = Counter(e.story.kind for e in dd.examples(400, seed=11, kind_weights={**dd.KIND_WEIGHTS, "appears": 4.0}))
    assert twice["appears"] > 2 * max(count for kind, count in twice.items() if kind != "appears")
    frames = Counter(e.frames for e in EXAMPLES)
    assert set(frames) == set(dd.FRAMES_CHOICES)
    assert frames.most_common(1)[0][0] == 8
    assert {e.frames for e in dd.examples(30, seed=1, frames_choices=(5,))} == {5}


def test_the_request_is_the_directors_own_and_the_answer_the_perfect_plan():
    for example in EXAMPLES:
        assert example.messages == [{"role": "user", "content": shape_instruction_text(
            example.story.prompt, example.frames, example.fps)}]
        answer = json.loads(example.answer)
        assert answer == st.ideal_frames(example.story, example.frames)
        assert isinstance(answer, list) and len(answer) == example.frames and all(isinstance(t, str) for t in answer)
        checks = sl.check_plan(example.story, answer)
        assert sl.tells_story(checks), (example.story, checks)


def test_a_storyline_example_is_the_same_draw_answered_with_its_story():
    """``answer="storyline"`` (template storyline): the same stories and prompts as the frames
    examples of that seed, asked without a frame count, answered with the story as JSON, from which
    the director writes exactly the perfect plan at any frame count."""
    storylines = dd.examples(len(EXAMPLES), seed=11, answer="storyline")
    assert [(e.story, e.frames) for e in storylines] == [(e.story, e.frames) for e in EXAMPLES]
    for example in storylines:
        assert example.messages == [{"role": "user", "content": storyline_instruction_text(example.story.prompt)}]
        told, problem = st.parse_storyline(example.answer)
        assert problem is None and told == st.Storyline(**example.story.model_dump(include={
            "background", "background_end", "objects"}))
        for frames in (4, example.frames, 16):
            assert st.ideal_frames(told, frames) == st.ideal_frames(example.story, frames)
        jsonschema.validate(json.loads(example.answer), st.storyline_schema())  # what the engine constrains to
    assert max(len(e.answer) for e in storylines) < min(len(e.answer) for e in EXAMPLES if e.frames == 8)


def test_prompts_name_exactly_the_storys_colours():
    for example in EXAMPLES:
        named = {want.colour for want in shapes.parse_caption(example.story.prompt)}
        assert named == {obj.colour for obj in example.story.objects}, example.story.prompt


def test_stories_are_like_the_benchmarks():
    """Two objects never share a cell in a frame of the ideal plan, no frame is empty, an object
    that enters or leaves has a still companion, a background change ends on another colour."""
    for example in EXAMPLES:
        story = example.story
        assert story.split == "train" and story.prompt
        for frames in (example.frames, *dd.CHECKED_FRAMES):
            for scene in st.ideal_scenes(story, frames):
                cells = [obj.cell for obj in scene.objects]
                assert cells and len(set(cells)) == len(cells), (story, frames)
        if story.kind in ("across", "vertical", "diagonal"):
            (obj,) = story.objects
            assert not obj.static
            same_row, same_column = obj.start[1] == obj.end[1], obj.start[0] == obj.end[0]
            assert {"across": same_row, "vertical": same_column, "diagonal": not same_row and not same_column}[
                story.kind]
        if story.kind in ("appears", "disappears"):
            assert sum(o.enters == "later" or o.leaves for o in story.objects) == 1 and len(story.objects) == 2
        if story.kind == "static_and_moving":
            assert sorted(o.static for o in story.objects) == [False, True]
        if story.kind == "two_moving":
            assert not any(o.static for o in story.objects)
        assert (story.background_end is not None) == (story.kind == "background_change")


def test_an_unsaid_background_is_white_and_a_said_one_is_named():
    unsaid = [e for e in EXAMPLES if not {"background", "backdrop"} & set(dd.normalised(e.story.prompt).split())]
    assert unsaid and all(e.story.background == sp.DEFAULT_BACKGROUND for e in unsaid)
    for example in EXAMPLES:
        if example not in unsaid:
            words = set(dd.normalised(example.story.prompt).split())
            assert example.story.background in words or (example.story.background == "gray" and "grey" in words)


def test_no_benchmark_prompt_in_twenty_thousand_and_an_excluded_prompt_is_never_made():
    benchmark = dd.benchmark_prompts()
    assert len(benchmark) == len(st.load_stories(dd.BENCHMARK_STORIES)) == 48 + 3  # and the 3 examples
    made = [dd.normalised(e.story.prompt) for e in dd.examples(20000, seed=5)]
    assert not set(made) & benchmark
    assert len(set(made)) > 19000  # many paraphrases, few repeats
    first = dd.examples(3, seed=5, exclude=frozenset())
    again = dd.examples(3, seed=5, exclude={dd.normalised(first[0].story.prompt)})
    assert dd.normalised(again[0].story.prompt) != dd.normalised(first[0].story.prompt)
    assert again[0].story.objects == first[0].story.objects  # the same story, said another way


def test_the_grammar_is_varied():
    words = dd.content_words(e.story.prompt for e in EXAMPLES)
    for word in ("slides", "rolls", "rises", "sinks", "appears", "vanishes", "backdrop", "violet", "grey", "pyramid",
                 "halfway", "later", "across", "corner", "night", "turns"):
        assert word in words, word


def test_held_out_coverage_is_a_report_of_the_held_out_prompts_words():
    report = dd.held_out_coverage(samples=500, seed=0)
    held_out = dd.content_words(s.prompt for s in st.load_stories(dd.BENCHMARK_STORIES) if s.split == "held_out")
    assert set(report["produced"]) | set(report["never"]) == held_out
    assert not set(report["produced"]) & set(report["never"])
    assert {"red", "left", "background"} <= set(report["produced"])


def test_a_kind_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="kind must be one of"):
        dd.random_story(np.random.default_rng(0), "spiral")
