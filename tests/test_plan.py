"""Plan contract: validation of LLM answers and hand-written plan files, lineage."""

import json

import pytest

from direct2v.director.plan import (
    FramePlan,
    PlanFileError,
    parent_frame,
    parse_frames,
    read_plan,
    validate_frames,
    write_plan,
)


def make_plan(**overrides):
    fields = dict(prompt_id="corgi", prompt="A corgi runs", fps=2, seed=0, frames=["a corgi stands", "a corgi runs"])
    return FramePlan(**{**fields, **overrides})


def test_parse_frames_accepts_the_papers_list_format():
    frames, problems = parse_frames('["a  corgi\\n stands", "a corgi runs"]', 2)
    assert problems == [] and frames == ["a corgi stands", "a corgi runs"]


def test_parse_frames_accepts_an_object_with_one_list():
    frames, problems = parse_frames('{"frames": ["x", "y", "z"]}', 3)
    assert frames == ["x", "y", "z"] and problems == []


@pytest.mark.parametrize(
    "answer, expected",
    [
        ('["a", "b"', "not valid JSON"),
        ('["a", "b"]', "exactly 3"),
        ('["a", "", "c"]', "frame 2 is empty"),
        ('["a", 5, "c"]', "frame 2 is not a string"),
        ('"just text"', "expected a JSON list"),
    ],
)
def test_parse_frames_reports_problems(answer, expected):
    frames, problems = parse_frames(answer, 3)
    assert frames is None
    assert any(expected in p for p in problems), problems


def test_validate_frames_rejects_overlong_descriptions():
    assert "longer than" in validate_frames(["x" * 301, "y"], 2)[0]


def test_plan_round_trip_and_hand_edit(tmp_path):
    path = write_plan(make_plan(), tmp_path)
    assert read_plan(path) == make_plan()
    data = json.loads(path.read_text())
    data["frames"][1] = "a corgi jumps over a log"
    path.write_text(json.dumps(data))
    assert read_plan(path).frames[1] == "a corgi jumps over a log"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.update(frames=["only one"]), "frames"),
        (lambda d: d.update(frames=["a", "  "]), "frame 2 is empty"),
        (lambda d: d.update(fps=0), "fps"),
        (lambda d: d.pop("prompt_id"), "prompt_id"),
        (lambda d: d.update(prompt_id="../../etc/passwd"), "id must be"),
        (lambda d: d.update(prompt_id="CON"), "reserved device name"),
        (lambda d: d.update(surprise=1), "surprise"),
    ],
)
def test_invalid_hand_written_plans_are_refused_with_the_reason(tmp_path, edit, expected):
    path = write_plan(make_plan(), tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(PlanFileError, match=expected):
        read_plan(path)


def test_unreadable_plan_file(tmp_path):
    with pytest.raises(PlanFileError, match="cannot read"):
        read_plan(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PlanFileError, match="invalid plan"):
        read_plan(tmp_path / "bad.json")


def test_fps_lineage():
    assert [parent_frame(j) for j in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError):
        parent_frame(-1)
