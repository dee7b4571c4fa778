"""The storyline benchmark's data and checks (direct2v/shape_world/stories.py, direct2v/evaluation/storylines.py), without any model:
every story's ideal plan tells its story in words and, drawn by the shape world, in pixels; each
check fails on the plan that breaks it."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from direct2v.evaluation import shapes
from direct2v.evaluation import storylines as sl
from direct2v.shape_world import stories as st
from direct2v.shape_world import world

ROOT = Path(__file__).resolve().parents[1]
DATA = st.KNOWN_STORIES
STORIES = st.load_stories(DATA)
BY_ID = {story.id: story for story in STORIES}
FRAME_COUNTS = (4, 8, 16)


@functools.cache
def _seen(scene: world.Scene) -> sl.Observation:
    """One drawn scene as the detectors read it (scenes repeat across frames and stories: read each once)."""
    return sl.observe_video(world.draw(scene)[None])[0]


def _video_checks(story: st.Story, scenes: list[world.Scene]) -> dict[str, bool]:
    return sl.check_story(story, [_seen(scene) for scene in scenes])


def _failing(checks: dict[str, bool]) -> set[str]:
    return {name for name, ok in checks.items() if not ok}


# ---------------------------------------------------------------- the data


def test_every_kind_has_two_dev_and_four_held_out_stories_and_the_examples_are_stories():
    counts = Counter((story.kind, story.split) for story in STORIES if story.split != "example")
    assert counts == {(kind, split): n for kind in st.KINDS for split, n in (("dev", 2), ("held_out", 4))}
    examples = [story.prompt for story in STORIES if story.split == "example"]
    shipped = [line for line in (REPO / "prompts_in/examples.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert examples == shipped  # the README's first run is scored as a storyline too


def test_prompts_are_one_short_sentence_naming_the_story_in_words_the_captioner_knows():
    for story in STORIES:
        assert len(story.prompt.split()) <= 25 and story.prompt.count(". ") == 0, story.id
        asked = shapes.parse_caption(story.prompt)
        assert {want.colour for want in asked} == set(story.colours()), story.id
        assert all(want.shape in (None, story.colours()[want.colour].shape) for want in asked), story.id
        assert all(want.shape for want in asked[: len(story.objects)]), f"{story.id}: an object without a shape word"
        words = story.prompt.lower()
        for background in filter(None, (story.background, story.background_end)):
            assert any(word in words for word in world.COLOUR_WORDS.get(background, (background,))), story.id


def test_held_out_prompts_use_words_the_dev_prompts_do_not():
    def words(split: str) -> set[str]:
        return {w.strip(".,:") for s in STORIES if s.split == split for w in s.prompt.lower().split()}

    assert {"glides", "sinks", "climbs", "falls", "disappears", "emerges", "darkens"} <= words("held_out") - words(
        "dev"
    )


def test_the_ideal_plans_never_put_two_objects_in_one_cell_and_never_show_an_empty_frame():
    for story in STORIES:
        for frames in FRAME_COUNTS:
            for scene in st.ideal_scenes(story, frames):
                cells = [obj.cell for obj in scene.objects]
                assert cells and len(set(cells)) == len(cells), story.id


def test_stories_vary_colours_shapes_and_backgrounds():
    objects = [obj for story in STORIES for obj in story.objects]
    assert {obj.colour for obj in objects} == set(world.COLOURS)
    assert {obj.shape for obj in objects} == set(world.SHAPES)
    assert {story.background for story in STORIES} == set(world.BACKGROUNDS)
    assert {story.background_end for story in STORIES if story.kind == "background_change"} >= {"white", "black"}


def test_bad_records_are_reported_with_their_line(tmp_path):
    good = DATA.read_text(encoding="utf-8").splitlines()[0]
    bad = json.loads(good) | {"objects": [{"colour": "pink", "shape": "circle", "start": "left"}]}
    path = tmp_path / "stories.jsonl"
    path.write_text(good + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=r"stories.jsonl:3: not a story \(objects.0.colour: .*colour must be one of"):
        st.load_stories(path)
    path.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match=r"stories.jsonl:2: story id 'across-01' repeated"):
        st.load_stories(path)
    crossed = json.loads(good) | {"objects": [{"colour": "red", "shape": "circle", "start": "left right"}]}
    path.write_text(json.dumps(crossed) + "\n")
    with pytest.raises(ValueError, match=r":1: .*not a cell: 'left right'"):
        st.load_stories(path)


def test_cells_read_and_written_as_words():
    assert st.parse_cell("left") == (0, 1) and st.parse_cell("top left") == (0, 0)
    assert st.parse_cell("center") == (1, 1) and st.parse_cell("lower right") == (2, 2)
    for cell in [(column, row) for column in range(3) for row in range(3)]:
        assert st.parse_cell(st.cell_name(cell)) == cell
    for text in ("", "up", "top bottom"):
        with pytest.raises(ValueError):
            st.parse_cell(text)


# ---------------------------------------------------------------- the ideal plan


def test_a_move_of_two_cells_over_eight_frames_is_three_two_three():
    story = BY_ID["across-01"]
    assert [st.ideal_cell(story.objects[0], f, 8)[0] for f in range(8)] == [0, 0, 0, 1, 1, 2, 2, 2]
    diagonal = BY_ID["diagonal-01"].objects[0]
    assert [st.ideal_cell(diagonal, f, 8) for f in (0, 3, 7)] == [(0, 0), (1, 1), (2, 2)]
    for frames in range(2, 17):
        cells = [st.ideal_cell(diagonal, f, frames) for f in range(frames)]
        assert cells[0] == diagonal.start and cells[-1] == diagonal.end and cells == sorted(cells)


def test_ideal_frames_are_the_canonical_captions():
    frames = st.ideal_frames(BY_ID["appears-01"], 8)
    assert frames[0] == "a red circle on the left on a white background"
    assert frames[-1] == "a red circle on the left and a blue square on the right on a white background"
    assert frames[3:5] == [frames[0], frames[-1]]  # the blue box enters at frame F // 2
    change = st.ideal_frames(BY_ID["background_change-01"], 4)
    assert [sl.background_of(text) for text in change] == ["white", "white", "black", "black"]


@pytest.mark.parametrize("frames", FRAME_COUNTS)
def test_every_ideal_plan_tells_its_story_in_words_and_in_pixels(frames):
    for story in STORIES:
        plan = sl.check_plan(story, st.ideal_frames(story, frames))
        video = _video_checks(story, st.ideal_scenes(story, frames))
        assert sl.tells_story(plan) and sl.tells_story(video), (story.id, plan, video)
        assert tuple(plan) == tuple(video) == sl.checks_for(story)
        assert {"start", "end", "path", "background", "extras"} <= set(plan)
        assert ("appears" in plan) == (story.kind == "appears")
        assert ("disappears" in plan) == (story.kind == "disappears")


def test_observe_video_reads_a_stack_of_frames():
    story = BY_ID["two_moving-01"]
    frames = np.stack([world.draw(scene) for scene in st.ideal_scenes(story, 4)])
    observed = sl.observe_video(frames)
    assert observed == [_seen(scene) for scene in st.ideal_scenes(story, 4)]
    assert sl.observe_video(frames.repeat(8, axis=1).repeat(8, axis=2)) == observed  # a 512 px video, read at 64 px
    assert sl.observe_video(frames / 255.0) == observed
    assert observed[0] == sl.Observation("white", (sl.Seen("blue", "square", (2, 0)), sl.Seen("red", "circle", (0, 1))))


# ---------------------------------------------------------------- reading a frame description


def test_a_background_word_is_never_an_object_and_is_read_apart():
    for text in (
        "a red ball on the left on a black background",
        "a red ball on the left against a grey backdrop",
        "a red ball on the left, white background",
        "a red ball on the left; the background is gray",
    ):
        observed = sl.observe_text(text)
        assert observed.objects == (sl.Seen("red", "circle", (0, 1)),), text
        assert observed.background in ("black", "gray", "white")
    assert sl.background_of("a red ball on the left") is None
    assert sl.background_of("the white background turns black") is None  # two states, not one frame
    assert sl.observe_text("a purple box at the bottom on an orange background").objects[1].colour == "orange"


def test_an_object_said_at_two_ends_of_an_axis_has_no_cell():
    assert sl.observe_text("a red ball rolls from the left side to the right side").objects[0].cell is None
    assert sl.observe_text("a blue box drops from the top to the bottom").objects[0].cell is None
    assert sl.observe_text("a blue box on the left, a red ball on the right").objects[0].cell == (0, 1)


# ---------------------------------------------------------------- each check fails on its broken plan


def _edit(story_id: str, frames: int = 8, **at: str) -> tuple[st.Story, list[str]]:
    """The ideal plan of ``story_id`` with frames replaced: ``f3="..."`` replaces frame 3 (0-based)."""
    story = BY_ID[story_id]
    plan = st.ideal_frames(story, frames)
    for key, text in at.items():
        plan[int(key[1:])] = text
    return story, plan


@pytest.mark.parametrize("story_id", ["across-01", "vertical-02", "diagonal-01", "two_moving-04"])
def test_the_prompt_restated_in_every_frame_fails_start_end_and_path(story_id):
    story = BY_ID[story_id]
    assert {"start", "end", "path"} <= _failing(sl.check_plan(story, [story.prompt] * 8))


def test_an_object_in_two_places_at_once_fails_the_path():
    both = "a red circle on the left and a red circle on the right on a white background"
    story, plan = _edit("across-01", f7=both)
    assert _failing(sl.check_plan(story, plan)) == {"end", "path"}
    story, plan = _edit("across-01", f4=both)
    assert _failing(sl.check_plan(story, plan)) == {"path"}
    scenes = st.ideal_scenes(story, 8)
    twice = world.Scene(scenes[4].objects + (world.ShapeObject("circle", "red", "small", 0, 1),), "white")
    assert _failing(_video_checks(story, scenes[:4] + [twice] + scenes[5:])) == {"path"}


def test_a_path_going_backwards_fails_only_the_path():
    story = BY_ID["across-01"]
    columns = [0, 1, 0, 1, 1, 2, 2, 2]
    plan = [f"a red circle {world.position_phrase((c, 1))} on a white background" for c in columns]
    assert _failing(sl.check_plan(story, plan)) == {"path"}
    scenes = [world.Scene((world.ShapeObject("circle", "red", "large", c, 1),), "white") for c in columns]
    assert _failing(_video_checks(story, scenes)) == {"path"}
    overshoot = BY_ID["across-06"]  # right -> center: passing it to the left is off the path
    plan = st.ideal_frames(overshoot, 8)
    plan[5] = plan[5].replace("in the center", "on the left")
    assert _failing(sl.check_plan(overshoot, plan)) == {"path"}


def test_a_static_object_that_moves_or_goes_missing_fails_the_path():
    story, plan = _edit("static_and_moving-01", f3="a red circle at the top on a white background")
    assert _failing(sl.check_plan(story, plan)) == {"path"}  # the blue box is gone in frame 4
    story, plan = _edit(
        "static_and_moving-01", f3="a blue square on the left and a red circle at the top on a white background"
    )
    assert _failing(sl.check_plan(story, plan)) == {"path"}


def test_an_object_without_a_position_fails_start_and_path():
    story, plan = _edit("across-01", f0="a red circle on a white background")
    assert _failing(sl.check_plan(story, plan)) == {"start", "path"}


def test_an_appearing_object_shown_from_frame_one_or_flickering_fails_appears():
    story = BY_ID["appears-01"]
    last = st.ideal_frames(story, 8)[-1]
    assert _failing(sl.check_plan(story, [last] * 8)) == {"appears"}
    story, plan = _edit("appears-01", f5="a red circle on the left on a white background")
    assert _failing(sl.check_plan(story, plan)) == {"appears"}
    scenes = st.ideal_scenes(story, 8)
    assert _failing(_video_checks(story, [scenes[-1]] * 8)) == {"appears"}


def test_a_disappearing_object_that_stays_or_comes_back_fails_disappears():
    story = BY_ID["disappears-01"]
    first = st.ideal_frames(story, 8)[0]
    assert _failing(sl.check_plan(story, [first] * 8)) == {"disappears"}
    story, plan = _edit("disappears-01", f6=first)
    assert _failing(sl.check_plan(story, plan)) == {"disappears"}
    assert _failing(_video_checks(story, [st.ideal_scenes(story, 8)[0]] * 8)) == {"disappears"}


def test_a_background_that_flips_or_is_not_said_fails_background():
    story = BY_ID["background_change-01"]
    plan = [f"a yellow circle in the center on a {colour} background" for colour in ["white", "black"] * 4]
    assert _failing(sl.check_plan(story, plan)) == {"background"}
    never = [f"a yellow circle in the center on a {colour} background" for colour in ["white"] * 8]
    assert _failing(sl.check_plan(story, never)) == {"background"}
    scenes = [world.Scene((world.ShapeObject("circle", "yellow", "small", 1, 1),), c) for c in ["white", "black"] * 4]
    assert _failing(_video_checks(story, scenes)) == {"background"}
    story, plan = _edit("across-01", f2="a red circle on the left")
    assert _failing(sl.check_plan(story, plan)) == {"background"}
    story, plan = _edit("across-01", f2="a red circle on the left on a black background")
    assert _failing(sl.check_plan(story, plan)) == {"background"}


def test_an_invented_colour_or_a_wrong_shape_fails_extras():
    story, plan = _edit(
        "across-01", f3="a red circle on the left and a green triangle at the top on a white background"
    )
    assert _failing(sl.check_plan(story, plan)) == {"extras"}
    story, plan = _edit("across-01", f3="a red square on the left on a white background")
    assert _failing(sl.check_plan(story, plan)) == {"extras"}
    story, plan = _edit("across-01", f3="a red ball on the left on a white background")  # a synonym is the same shape
    assert sl.tells_story(sl.check_plan(story, plan))
    scenes = st.ideal_scenes(story, 8)
    extra = world.Scene(scenes[2].objects + (world.ShapeObject("square", "green", "small", 2, 2),), "white")
    assert _failing(_video_checks(story, scenes[:2] + [extra] + scenes[3:])) == {"extras"}
    squares = [
        world.Scene((world.ShapeObject("square", "red", "small", *obj.cell),), "white")
        for scene in scenes
        for obj in scene.objects
    ]
    assert _failing(_video_checks(story, squares)) == {"extras"}


# ---------------------------------------------------------------- the benchmark's scoring, on a made-up run


def _benchmark():
    spec = importlib.util.spec_from_file_location("storylines_benchmark", ROOT / "benchmarks" / "storylines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_scores_a_run_directory_from_its_plans_manifest_and_videos(tmp_path):
    """Four stories: one told in plan and video, one whose video breaks the path (a renderer
    failure), one whose plan restates the prompt, one whose video failed to render."""
    from direct2v.job import manifest

    bench = _benchmark()
    stories = [BY_ID["across-01"], BY_ID["across-03"], BY_ID["appears-01"], BY_ID["vertical-01"]]
    run = tmp_path / "run"
    bench.write_ideal_plans(stories, 8, run / "plans")
    restated = json.loads((run / "plans" / "appears-01.json").read_text())
    (run / "plans" / "appears-01.json").write_text(json.dumps(restated | {"frames": [restated["prompt"]] * 8}))
    videos = {story.id: np.stack([world.draw(scene) for scene in st.ideal_scenes(story, 8)]) for story in stories}
    videos["across-03"] = videos["across-03"][::-1]  # right to left: backwards
    rows = [
        manifest.ManifestRow(run_id="run", prompt_id=s.id, status="ok", video_path=f"videos/{s.id}.mp4", render_s=2.0)
        for s in stories[:3]
    ]
    rows.append(manifest.ManifestRow(run_id="run", prompt_id="vertical-01", status="failed", failed_stage="render"))
    manifest.append_rows(run, rows)
    (run / "director_report.json").write_text(json.dumps({"prompts": 4, "engine_calls": [{"seconds": 6.0}]}))

    results = bench.score_run(run, [*stories, BY_ID["diagonal-01"]], read=lambda path: videos[path.stem])
    by_id = {r["id"]: r for r in results}
    assert list(by_id) == ["across-01", "across-03", "appears-01", "vertical-01"]  # diagonal-01: not in the run
    assert by_id["across-01"]["plan_tells"] and by_id["across-01"]["video_tells"]
    assert by_id["across-03"]["plan_tells"] and _failing(by_id["across-03"]["video"]) == {"start", "end", "path"}
    assert not by_id["appears-01"]["plan_tells"] and by_id["appears-01"]["video_tells"]
    assert by_id["vertical-01"]["plan_tells"] and _failing(by_id["vertical-01"]["video"]) == set(sl.CHECKS) - {
        "appears",
        "disappears",
    }
    assert bench.director_seconds(run) == 1.5

    report = bench.report(results, st.KINDS, run)
    assert "director 1.50 s per prompt" in report
    assert report.index("### held_out") < report.index("### dev")
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in report.split("### dev")[0].splitlines()
        if line.startswith("| ") and "kind" not in line
    }
    header = ["stories", "plan tells", "video tells", "renderer fails", *sl.CHECKS, "render s/video"]
    assert set(cells) == {"across", "all"}  # the held-out table: across-03 alone
    across_held_out = dict(zip(header, cells["across"]))
    assert across_held_out["renderer fails"] == "1" and across_held_out["path"] == "1/0 of 1"
    assert across_held_out["appears"] == "–" and across_held_out["render s/video"] == "2.00"


def test_the_benchmark_scores_a_users_run_by_its_prompts_when_the_ids_are_not_story_ids(tmp_path):
    """``scripts/run-examples.sh`` names its prompts p00001-...: each story is found by its prompt
    (case and punctuation aside) and scored from that row's own plan and video."""
    from direct2v.job import manifest

    bench = _benchmark()
    told, backwards = BY_ID["example-01"], BY_ID["example-02"]
    run = tmp_path / "run"
    bench.write_ideal_plans([told, backwards], 8, run / "plans")
    for story, prompt_id in ((told, "p00001-aa"), (backwards, "p00002-bb")):
        (run / "plans" / f"{story.id}.json").rename(run / "plans" / f"{prompt_id}.json")
    videos = {"p00001-aa": np.stack([world.draw(scene) for scene in st.ideal_scenes(told, 8)]),
              "p00002-bb": np.stack([world.draw(scene) for scene in st.ideal_scenes(backwards, 8)])[::-1]}
    manifest.append_rows(run, [
        manifest.ManifestRow(run_id="run", prompt_id="p00001-aa", prompt=told.prompt.upper() + "!", status="ok",
                             video_path="videos/p00001-aa.mp4"),
        manifest.ManifestRow(run_id="run", prompt_id="p00002-bb", prompt=backwards.prompt, status="ok",
                             video_path="videos/p00002-bb.mp4"),
    ])

    results = bench.score_run(run, [told, backwards, BY_ID["example-03"]], read=lambda path: videos[path.stem])
    by_id = {r["id"]: r for r in results}
    assert list(by_id) == ["example-01", "example-02"]  # example-03: not in the run
    assert by_id["example-01"]["plan_tells"] and by_id["example-01"]["video_tells"]
    assert by_id["example-02"]["plan_tells"] and {"start", "end"} <= _failing(by_id["example-02"]["video"])


# ---------------------------------------------------------------- the gallery shows a known storyline's checks


def test_the_gallery_shows_the_checks_of_a_known_storyline_and_nothing_for_other_prompts(tmp_path):
    """A row whose prompt is a known storyline (case and punctuation aside) gets its plan and video
    checks on the page; its video run backwards fails start/end/path there; another prompt gets none."""
    from direct2v.job import manifest
    from direct2v.publish import gallery
    from direct2v.render.encode import encode_mp4

    story = BY_ID["example-01"]
    frames = st.ideal_frames(story, 8)
    drawn = np.stack([world.draw(scene) for scene in st.ideal_scenes(story, 8)])
    encode_mp4(drawn, tmp_path / "videos" / "told.mp4", fps=2)
    encode_mp4(drawn[::-1], tmp_path / "videos" / "backwards.mp4", fps=2)
    encode_mp4(drawn, tmp_path / "videos" / "other.mp4", fps=2)

    def row(prompt_id, prompt):
        return manifest.ManifestRow(run_id="run", prompt_id=prompt_id, prompt=prompt, status="ok",
                                    video_path=f"videos/{prompt_id}.mp4", frame_prompts=frames)

    rows = [row("told", story.prompt.upper() + "!"), row("backwards", story.prompt), row("other", "a corgi runs")]
    told = gallery.storyline_checks(rows[0], tmp_path)
    assert told is not None and sl.tells_story(told["plan"]) and sl.tells_story(told["video"])
    backwards = gallery.storyline_checks(rows[1], tmp_path)
    assert sl.tells_story(backwards["plan"]) and _failing(backwards["video"]) == {"start", "end", "path"}
    assert gallery.storyline_checks(rows[2], tmp_path) is None

    page = gallery.write_index(tmp_path, rows).read_text()
    entries = {entry.split('"', 1)[0]: entry for entry in page.split('id="video-')[1:]}
    assert "video: tells its story" in entries["told"] and "plan: tells its story" in entries["told"]
    assert "video: does not tell its story" in entries["backwards"] and "start &#10007;" in entries["backwards"]
    assert "storyline" not in entries["other"]


def test_the_samples_benchmark_counts_distinct_plans_their_distance_and_the_stories_they_tell(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("samples_benchmark", ROOT / "benchmarks" / "samples.py")
        samples = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(samples)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert samples.frame_distance(["a red circle"], ["a red circle"]) == 0.0
    assert samples.frame_distance(["a red circle"], ["blue squares"]) == 1.0
    assert samples.frame_distance(["a red circle", "x"], ["a blue circle", "x"]) == pytest.approx((1 - 2 / 4) / 2)

    story = BY_ID["across-01"]
    ideal = st.ideal_frames(story, 8)
    plans = tmp_path / "run" / "plans"
    plans.mkdir(parents=True)
    for k, (frames, sampling) in enumerate([(ideal, {}), (ideal[::-1], {"redraws": 1}), (ideal, {"repeats": "x-s0"})]):
        plan = {"prompt_id": f"{story.id}-s{k}", "frames": frames,
                "director_sampling": {"sample": k, "sample_of": story.id, **sampling}}
        (plans / f"{story.id}-s{k}.json").write_text(json.dumps(plan))
    results = samples.score(tmp_path / "run", [story, BY_ID["across-03"]])
    assert [r["id"] for r in results] == [story.id]  # across-03 has no samples in the run
    assert [(s["sample"], s["plan_tells"], s["video_tells"]) for s in results[0]["samples"]] == [
        (0, True, None), (1, False, None), (2, True, None)]
    distance = samples.frame_distance(ideal, ideal[::-1])
    row = samples.table(results, [story.kind]).splitlines()[2]
    assert row == f"| across | 1 | 3 | 2.00 | {2 * distance / 3:.3f} | 1/1 | 1/2 | – | – | 1 | 1 |"
