"""The director's instruction texts and answer schema, as pure functions (no engine)."""

import pytest

from direct2v.director import (
    TEMPLATE_VERSION,
    doubling_text,
    frames_schema,
    instruction_text,
    number_in_words,
    repair_text,
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
    assert TEMPLATE_VERSION == "v1"
