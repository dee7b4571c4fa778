"""The director's words and rules, as pure functions: the instruction templates (v1, the paper's
one request for the whole list; v2, one request per frame after a worked example), the answer
schemas, and how an answer is parsed and judged. ``director.Director`` sends them to the engine.

Templates are versioned files under direct2v/director/templates/; the version is recorded in every plan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources

from direct2v.director import quality
from direct2v.director.plan import TokenBudget, parse_frames, quality_findings, quality_problems

TEMPLATE_VERSIONS = ("v1", "v2", "shapes", "storyline")
CAMERA_INSTRUCTION = "4. Infer the desired camera angles and movements\n"
# Brief descriptions (the paper's GPT-4 ones are ~150 characters); the cap stays well inside SD's 77
# CLIP tokens and stops a small model from looping inside one string. v2 asks for one frame at a
# time and 150 characters measured cleaner plans (benchmarks/quality.py). A renderer whose
# tokenizer packs fewer characters per token lowers it (TokenBudget.safe_chars).
TEMPLATE_FRAME_CHARS = {"v1": 200, "v2": 150, "shapes": 150, "storyline": 150}
SCHEMA_FRAME_CHARS = TEMPLATE_FRAME_CHARS["v1"]
# vLLM's presence penalty counts only the answer's own tokens, not the prompt's (unlike its
# repetition penalty): it pushes a frame away from the words it already used, so the model writes
# a scene instead of one phrase over and over. Measured per template (benchmarks/quality.py).
TEMPLATE_PRESENCE_PENALTY = {"v1": 0.0, "v2": 1.0, "shapes": 0.0, "storyline": 0.0}
# Asked again greedily, a small model mostly gives the same answer back; v2 samples
# ``repair_candidates`` answers per repaired frame and keeps the first that breaks no rule.
TEMPLATE_REPAIR_TEMPERATURE = {"v1": None, "v2": 0.5, "shapes": None, "storyline": None}

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_in_words(number: int) -> str:
    """English words for 0..999, as the paper writes frame counts ("eight", "sixteen")."""
    if not 0 <= number <= 999:
        raise ValueError(f"number_in_words supports 0..999, got {number}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(number, 100)
    return f"{_ONES[hundreds]} hundred" + (f" and {number_in_words(rest)}" if rest else "")


@cache
def load_template(name: str, version: str = "v1") -> str:
    """Instruction templates are versioned files under direct2v/director/templates/."""
    return resources.files("direct2v.director.templates").joinpath(f"{name}_{version}.txt").read_text("utf-8")


def files_digest(paths) -> str:
    """A short hash of files' names and bytes (in name order)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@cache
def templates_digest() -> str:
    """The hash of every template file (instructions, worked example): part of the plan cache key,
    so that an edited template or example is never answered with the old text's cached plans."""
    folder = resources.files("direct2v.director.templates")
    return files_digest(path for path in folder.iterdir() if path.name.endswith((".txt", ".json")))


@cache
def worked_example() -> dict:
    """v2's worked example: a prompt, its eight frames, and the frame halfway after each one."""
    return json.loads(resources.files("direct2v.director.templates").joinpath("example_v2.json").read_text("utf-8"))


def instruction_text(prompt: str, frames: int, fps: int, camera: bool = True) -> str:
    """v1: the paper's Fig. 15 instruction with the attribute controls of Fig. 13 filled in."""
    return load_template("frame_director").format(
        frames_in_words=number_in_words(frames),
        fps=fps,
        camera_instruction=CAMERA_INSTRUCTION if camera else "",
        prompt=prompt,
    ).rstrip("\n")


def shape_instruction_text(prompt: str, frames: int, fps: int) -> str:
    """The shape-world profile's one request (template ``shapes``): the whole list, in the world's
    words. The shape director model is fine-tuned on exactly this text (``director.shape_training``)."""
    return load_template("frame_director", "shapes").format(
        frames_in_words=number_in_words(frames), fps=fps, prompt=prompt
    ).rstrip("\n")


def storyline_instruction_text(prompt: str) -> str:
    """Template ``storyline``'s one request: the prompt's storyline as JSON (objects, cells, timing,
    background), from which the frames are written (``director.shapes.StorylineStrategy``). It does not
    depend on the frame count: the story is the same at any frame rate."""
    return load_template("frame_director", "storyline").format(prompt=prompt).rstrip("\n")


def frame_phase(frame: int, frames: int) -> str:
    """Where frame ``frame`` (1-based) of ``frames`` sits in the video, in words: a one-frame
    request only knows the story's progress from this."""
    if frame == 1:
        return "the very beginning of the video"
    if frame == frames:
        return "the very end of the video"
    position = (frame - 1) / (frames - 1)
    part = "early part" if position < 1 / 3 else "middle" if position < 2 / 3 else "late part"
    return f"the {part} of the video"


def frame_instruction_text(prompt: str, frame: int, frames: int, fps: int, camera: bool = True) -> str:
    """v2: the paper's instruction, asking for frame ``frame`` (1-based) of ``frames`` alone."""
    return load_template("frame_director", "v2").format(
        frames_in_words=number_in_words(frames),
        fps=fps,
        frame=frame,
        frames=frames,
        phase=frame_phase(frame, frames),
        camera_instruction=CAMERA_INSTRUCTION if camera else "",
        prompt=prompt,
    ).rstrip("\n")


def doubling_text(frames: int, fps: int) -> str:
    """v1: the paper's follow-up turn asking for twice the frames at twice the frame rate."""
    return load_template("fps_doubling").format(frames=frames, fps=fps).rstrip("\n")


def between_text(prompt: str, frame: int, frames: int, fps: int, before: str, after: str | None) -> str:
    """v2's FPS doubling: frame ``frame`` (1-based, even) of the doubled round sits between the
    previous round's frames that became ``frame - 1`` and ``frame + 1``; after the last one, it
    is a moment later."""
    next_frame = f'Frame {frame + 1} is: "{after}"\n' if after is not None else ""
    position = "halfway between them" if after is not None else "a moment after it"
    return load_template("fps_doubling", "v2").format(
        prompt=prompt, frames=frames, fps=fps, before=frame - 1, first=before, next_frame=next_frame,
        frame=frame, position=position,
    ).rstrip("\n")


def repair_text(problems: Sequence[str], frames: int) -> str:
    """v1: the turn that quotes what was wrong with the previous answer."""
    quoted = " ".join(f"{problem.rstrip('.')}." for problem in problems)
    return load_template("repair").format(problems=quoted, frames=frames).rstrip("\n")


def frames_schema(frames: int, max_chars: int = SCHEMA_FRAME_CHARS) -> dict:
    """v1's answer: the paper's format, a list of exactly ``frames`` strings."""
    return {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
        "minItems": frames,
        "maxItems": frames,
    }


def frame_schema(max_chars: int) -> dict:
    """v2's answer: one description, a JSON string."""
    return {"type": "string", "minLength": 1, "maxLength": max_chars}


def example_frame(frame: int, frames: int, between: bool = False) -> str:
    """The worked example's frame nearest to position ``frame`` (1-based) of ``frames`` (its eight
    frames spread over any count); ``between``: the example's frame halfway after that one."""
    example = worked_example()
    shown = example["between" if between else "frames"]
    index = round((frame - 1) * (len(shown) - 1) / max(frames - 1, 1))
    return shown[index]


def cut_off_problem(finish_reason: str) -> str | None:
    """The hard problem of an answer the engine did not finish (today's only other sign would be
    bad JSON), or None for a finished one."""
    if finish_reason == "length":
        return "the answer was cut off at its token limit (finish_reason 'length'); write shorter descriptions"
    if finish_reason == "error":
        return "the engine returned an error for this request (finish_reason 'error')"
    return None


def judge_answer(
    answer: str, frames: int, user_prompt: str, budget: TokenBudget | None, finish_reason: str = "stop"
) -> tuple[list[str] | None, dict[str, str]]:
    """Parse an answer and name every rule it breaks: ``hard`` problems make it unusable,
    quality problems (see plan.quality_problems) are judged by the policy."""
    cut_off = cut_off_problem(finish_reason)
    if cut_off:
        return None, {"hard": cut_off}
    parsed, problems = parse_frames(answer, frames, budget)
    if parsed is None:
        return None, {"hard": "; ".join(problems)}
    return parsed, quality_problems(parsed, user_prompt)


def parse_frame(answer: str, finish_reason: str = "stop") -> tuple[str | None, str | None]:
    """v2: one answer as (description, None) or (None, the hard problem)."""
    cut_off = cut_off_problem(finish_reason)
    if cut_off:
        return None, cut_off
    try:
        text = json.loads(answer)
    except json.JSONDecodeError as error:
        return None, f"the answer is not a JSON string ({error.msg} at character {error.pos})"
    if not isinstance(text, str) or not text.strip():
        return None, "the answer is not a non-empty JSON string"
    return " ".join(text.split()), None


COPIED_EXAMPLE = "it copies the worked example instead of showing this prompt"
EXAMPLE_OVERLAP = 0.5  # content-word Jaccard above which a frame is the worked example's, not the prompt's


def copies_example(description: str) -> bool:
    """v2: the description is (nearly) one of the worked example's frames: a small model sometimes
    answers the example's turn again instead of the prompt's. A hard problem: the frame is asked again."""
    stems = quality.content_stems(description)
    example = worked_example()
    return any(quality.jaccard(stems, quality.content_stems(frame)) >= EXAMPLE_OVERLAP
               for frame in [*example["frames"], *example["between"]])


def frames_to_repair(frames: list[str], user_prompt: str, fixed: set[int]) -> set[int]:
    """v2: which frames (0-based) the soft rules ask again. Of two identical neighbours the later
    is asked again, unless it is ``fixed`` (a frame carried from the previous round); fixed frames
    are never asked again."""
    repairs = set()
    for rule, numbers in quality_findings(frames, user_prompt).items():
        for number in numbers:
            index = number if rule == "adjacent_identical" else number - 1  # the later of the pair
            if index in fixed and rule == "adjacent_identical":
                index = number - 1
            if index not in fixed:
                repairs.add(index)
    return repairs


def frame_chars_limit(budget: TokenBudget | None, chars: int = SCHEMA_FRAME_CHARS) -> int:
    """The schema's per-description character cap: ``chars``, or less if the renderer's
    tokenizer would not fit that many characters in its token limit."""
    return chars if budget is None else min(chars, budget.safe_chars())


def max_answer_tokens(frames: int, frame_chars: int) -> int:
    """Generation cap for one answer: ~3 characters per LLM token, quotes and commas, a margin."""
    return frames * (frame_chars // 3 + 8) + 32
