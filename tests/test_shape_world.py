"""The shape world's ground truth: drawing, captions, detectors and the measures built on them."""

import numpy as np
import pytest

from direct2v.evaluation import shapes
from direct2v.shape_world import world


def _scenes(count, seed=0):
    rng = np.random.default_rng(seed)
    return [world.training_scene(rng) for _ in range(count)]


def test_detectors_read_back_every_drawn_object_exactly():
    for scene in _scenes(300):
        found = world.detect(world.draw(scene))
        assert len(found) == len(scene.objects)
        for obj in scene.objects:
            hit = world.find(found, obj.colour)
            assert hit is not None and hit.cell == obj.cell and hit.shape == obj.shape, (scene, found)
        assert world.detect_background(world.draw(scene)) == scene.background


def test_detectors_split_two_blobs_of_one_colour_and_ignore_specks():
    image = world.draw(world.Scene((world.ShapeObject("circle", "red", "small", 0, 1),
                                    world.ShapeObject("square", "red", "small", 2, 1)), "white"))
    image = image.copy()
    image[0:3, 30:33] = world.COLOURS["blue"]  # 9 px: below MIN_AREA
    image[40:42, 5:60] = world.COLOURS["orange"]  # 110 px but 2 px thin: a decoder's fringe, no core
    found = world.detect(image)
    assert [(d.colour, d.cell) for d in sorted(found, key=lambda d: d.x)] == [("red", (0, 1)), ("red", (2, 1))]


def test_held_out_triples_never_reach_training():
    held = set(world.triples(held_out=True))
    assert 0 < len(held) < 6 * 3 * 9 // 4
    for scene in _scenes(2000, seed=1):
        assert all((o.colour, o.shape, o.cell) not in held for o in scene.objects)


def test_image_captions_ask_for_held_out_or_for_seen_combinations_only():
    def triples(captions):
        return [(o.colour, o.shape, (o.column, o.row)) for text in captions for o in shapes.parse_caption(text)]

    held_out = triples(shapes.image_captions(42))
    seen = triples(shapes.image_captions(42, held_out=False))
    assert len(held_out) == len(seen) == 42
    assert all(world.is_held_out(*t) for t in held_out) and set(held_out) == set(world.triples(held_out=True))
    assert not any(world.is_held_out(*t) for t in seen) and len(set(seen)) == 42  # 42 distinct of the 141 seen
    assert seen == triples(shapes.image_captions(42, held_out=False))  # seeded


def test_every_caption_paraphrase_parses_back_to_its_objects():
    rng = np.random.default_rng(5)
    for scene in _scenes(400, seed=2):
        text = world.caption(scene, rng)
        wanted = shapes.parse_caption(text)
        assert [w.colour for w in wanted] == [o.colour for o in scene.objects], text
        for want, obj in zip(wanted, scene.objects):
            assert want.shape == obj.shape, text
            assert (want.column, want.row) == obj.cell, text


def test_parse_caption_on_free_form_text():
    wanted = shapes.parse_caption("The small violet ball rolls to the centre; a blue box waits at the top right.")
    assert wanted == [shapes.Wanted("purple", "circle", 1, 1), shapes.Wanted("blue", "square", 2, 0)]
    assert shapes.parse_caption("a quiet white background") == []


def _video(scenario):
    """Draw a scenario's frames exactly as its frame prompts ask."""
    frames = []
    for text in scenario.frames:
        objects = tuple(world.ShapeObject(w.shape, w.colour, "large", w.column, w.row)
                        for w in shapes.parse_caption(text))
        background = text.rsplit(" on a ", 1)[1].split()[0]
        frames.append(world.draw(world.Scene(objects, background)))
    return np.stack(frames)


@pytest.mark.parametrize("kind", [0, 1, 2])
def test_a_video_drawn_as_asked_scores_perfectly(kind):
    scenario = shapes.video_scenarios(seed=4)[kind]
    scores = shapes.video_scores(_video(scenario), scenario.frames)
    assert scores["adherence"] == 1.0 and scores["colour"] == 1.0 and scores["identity"] == 1.0
    assert scores["count_errors"] == 0.0


def test_a_frozen_or_duplicated_object_is_scored_down():
    across = shapes.video_scenarios(seed=4)[0]
    video = _video(across)
    frozen = np.repeat(video[:1], len(video), axis=0)  # never leaves the left
    scores = shapes.video_scores(frozen, across.frames)
    assert scores["adherence"] == pytest.approx(np.mean([t.count("on the left") > 0 for t in across.frames]))
    assert scores["identity"] == 1.0 and scores["flicker"] == 0.0
    appears = shapes.video_scenarios(seed=4)[2]
    early = np.repeat(_video(appears)[-1:], len(video), axis=0)  # the second object there from the start
    assert shapes.video_scores(early, appears.frames)["count_errors"] == 0.5


def test_image_scores_separate_colour_cell_and_shape():
    text = "a red circle in the top left corner on a white background"
    right_cell = world.draw(world.Scene((world.ShapeObject("square", "red", "large", 0, 0),), "white"))
    wrong_cell = world.draw(world.Scene((world.ShapeObject("circle", "red", "large", 2, 2),), "white"))
    assert shapes.image_scores(right_cell, text) == {"colour": 1.0, "position": 1.0, "shape": 0.0, "count_ok": 1.0}
    assert shapes.image_scores(wrong_cell, text) == {"colour": 1.0, "position": 0.0, "shape": 1.0, "count_ok": 1.0}
