"""The director's instruction texts and answer schema, as pure functions (no engine)."""

import pytest

from direct2v.core.config import DirectorSettings
from direct2v.director.instructions import (
    TEMPLATE_VERSIONS,
    between_text,
    doubling_text,
    example_frame,
    frame_instruction_text,
    frame_phase,
    frame_schema,
    frames_schema,
    instruction_text,
    number_in_words,
    repair_text,
    worked_example,
)

PAPER_FIG15 = (
    "Given a user prompt, envision a video scene and create eight distinct brief image descriptions at a "
    "frame rate of 1 fps. Ensure that each description is self-contained, encompassing all objects and their "
    "properties within the scene. The difference between two adjacent descriptions must be small, considering "
    'the small interval. Use the following format: ["", "", ..., ""].\n\n'
    "Before you write each description, you must follow these instructions. These are of primary importance:\n"
    "1. Identify and decompose specific actions or events included in the user prompts\n"
    "2. Detect and describe objects mentioned in the user prompts\n"
    "3. Describe environmental settings, which include contexts and backgrounds\n"
    "4. Infer the desired camera angles and movements\n\n"
    "Prompt: A corgi is running and another corgi joins later"
)


def test_instruction_is_the_papers_fig15_text():
    assert instruction_text("A corgi is running and another corgi joins later", 8, 1) == PAPER_FIG15


def test_camera_control_off_drops_the_camera_instruction():
    text = instruction_text("x", 8, 1, camera=False)
    assert "camera" not in text and "3. Describe environmental settings" in text


@pytest.mark.parametrize(
    "n, words", [(2, "two"), (8, "eight"), (16, "sixteen"), (21, "twenty-one"), (40, "forty"), (128, "one hundred and twenty-eight")]
)
def test_number_in_words(n, words):
    assert number_in_words(n) == words


def test_doubling_turn_is_the_papers_text():
    assert doubling_text(16, 2) == (
        "Now, at a frame rate of 2 fps, divide each frame in the previous result into two separate image "
        "descriptions. This should eventually result in 16 frames."
    )


def test_repair_turn_quotes_the_problems():
    text = repair_text(["expected exactly 8 frame descriptions, got 3", "frame 2 is empty"], 8)
    assert "expected exactly 8 frame descriptions, got 3. frame 2 is empty." in text
    assert "exactly 8" in text


def test_schema_fixes_the_frame_count():
    schema = frames_schema(5)
    assert schema["type"] == "array" and schema["minItems"] == schema["maxItems"] == 5
    assert TEMPLATE_VERSIONS == ("v1", "v2", "shapes", "storyline") and DirectorSettings().template_version == "v2"


def test_v2_asks_for_one_frame_with_the_papers_instruction():
    text = frame_instruction_text("A corgi is running and another corgi joins later", 3, 8, 1)
    assert text.startswith("Given a user prompt, envision a video scene of eight frames at a frame rate of 1 fps, "
                           "and write the image description of frame 3 of 8, which shows the early part of the video.")
    # the paper's instructions and its attribute controls stay the semantic core
    assert PAPER_FIG15[PAPER_FIG15.index("Before you write"):] in text.replace("Before you write the description",
                                                                                 "Before you write each description")
    assert "camera" not in frame_instruction_text("x", 3, 8, 1, camera=False)
    assert frame_schema(150) == {"type": "string", "minLength": 1, "maxLength": 150}


@pytest.mark.parametrize("frame, frames, phase", [
    (1, 8, "the very beginning"), (2, 8, "the early part"), (3, 8, "the early part"), (4, 8, "the middle"),
    (5, 8, "the middle"), (6, 8, "the late part"), (8, 8, "the very end"), (2, 2, "the very end"),
])
def test_frame_phase_says_where_the_frame_is(frame, frames, phase):
    assert frame_phase(frame, frames) == f"{phase} of the video"


def test_worked_example_spreads_over_any_frame_count():
    example = worked_example()
    assert len(example["frames"]) == len(example["between"]) == 8
    assert [example_frame(k, 8) for k in range(1, 9)] == example["frames"]
    assert example_frame(1, 3) == example["frames"][0] and example_frame(3, 3) == example["frames"][-1]
    assert example_frame(2, 3) in example["frames"][3:5]
    assert example_frame(1, 8, between=True) == example["between"][0]


def test_v2_doubling_asks_for_the_frame_between_two_kept_ones():
    text = between_text("A corgi runs", 4, 16, 2, "The corgi stands.", "The corgi runs.")
    assert 'Frame 3 is: "The corgi stands."' in text and 'Frame 5 is: "The corgi runs."' in text
    assert "frame 4, halfway between them" in text and 'the prompt "A corgi runs" has 16 frames' in text
    last = between_text("A corgi runs", 16, 16, 2, "The corgi sits.", None)
    assert 'Frame 15 is: "The corgi sits."' in last and "frame 16, a moment after it" in last
    assert "Frame 17" not in last
