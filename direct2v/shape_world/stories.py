"""The shape world's stories: what a storyline asks for, and what a perfect director writes for it.

A story is one or two shape-world objects, each with a start and an end cell (the same cell for a
static one), entering at the start or later and perhaps leaving, on a background that may change
once (:class:`Story`, :class:`StoryObject`; read from JSONL by :func:`load_stories`).
:func:`ideal_scenes` and :func:`ideal_frames` are what a perfect director would ask for: the
storyline benchmark (``direct2v.evaluation.storylines``) scores plans against them, and the shape
director is fine-tuned on them (``direct2v.director.shape_data``).

Pure functions; no model is loaded here.
"""

from __future__ import annotations

import functools
import json
import re

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from direct2v.shape_world import world

Cell = tuple[int, int]  # (column, row), 0..2 each
Kind = Literal[
    "across", "vertical", "diagonal", "appears", "disappears", "static_and_moving", "two_moving", "background_change"
]
KINDS: tuple[str, ...] = get_args(Kind)
_COLUMN_WORDS = {"left": 0, "right": 2}
_ROW_WORDS = {"top": 0, "upper": 0, "bottom": 2, "lower": 2}
_CENTRE_WORDS = {"center", "centre", "middle"}


def parse_cell(text: str) -> Cell:
    """``"left"`` -> (0, 1), ``"top left"`` -> (0, 0), ``"center"`` -> (1, 1): an axis left unsaid is the centre."""
    words = text.lower().split()
    unknown = [w for w in words if w not in _COLUMN_WORDS and w not in _ROW_WORDS and w not in _CENTRE_WORDS]
    columns = {_COLUMN_WORDS[w] for w in words if w in _COLUMN_WORDS}
    rows = {_ROW_WORDS[w] for w in words if w in _ROW_WORDS}
    if not words or unknown or len(columns) > 1 or len(rows) > 1:
        raise ValueError(f"not a cell: {text!r} (e.g. 'left', 'top left', 'center', 'bottom right')")
    return (columns.pop() if columns else 1), (rows.pop() if rows else 1)


def cell_name(cell: Cell) -> str:
    """The words :func:`parse_cell` reads back: (0, 0) -> ``"top left"``, (1, 1) -> ``"center"``."""
    column, row = world.COLUMNS[cell[0]], world.ROWS[cell[1]]
    parts = [word for word in (row, column) if word not in ("middle", "center")]
    return " ".join(parts) or "center"


class StoryObject(BaseModel):
    """One object of a story: it goes from ``start`` to ``end`` (equal: it stays), is there from
    frame 1 or only from halfway (``enters="later"``), and may be gone from halfway (``leaves``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    colour: str
    shape: str
    start: Cell
    end: Cell
    enters: Literal["start", "later"] = "start"
    leaves: bool = False

    @model_validator(mode="before")
    @classmethod
    def _static_by_default(cls, data):
        if isinstance(data, dict) and "end" not in data and "start" in data:
            data = {**data, "end": data["start"]}
        return data

    @field_validator("start", "end", mode="before")
    @classmethod
    def _cell(cls, value):
        return parse_cell(value) if isinstance(value, str) else value

    @field_validator("colour", "shape")
    @classmethod
    def _in_the_world(cls, value: str, info: ValidationInfo) -> str:
        names = world.COLOURS if info.field_name == "colour" else world.SHAPES
        if value not in names:
            raise ValueError(f"{info.field_name} must be one of {', '.join(names)}")
        return value

    @model_validator(mode="after")
    def _on_the_grid(self) -> StoryObject:
        if not all(0 <= value <= 2 for value in (*self.start, *self.end)):
            raise ValueError("cells are (column, row) with 0..2 each")
        if self.enters == "later" and self.leaves:
            raise ValueError("an object cannot both enter later and leave: it would never be seen at either end")
        return self

    @property
    def static(self) -> bool:
        return self.start == self.end


class Storyline(BaseModel):
    """What happens in a storyline: its objects and its background (``background_end``: the
    background from halfway). The shape-story director answers with one (:func:`storyline_answer`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    background: str
    background_end: str | None = None
    objects: tuple[StoryObject, ...]

    @model_validator(mode="after")
    def _coherent(self) -> Storyline:
        for name in (self.background, self.background_end):
            if name is not None and name not in world.BACKGROUNDS:
                raise ValueError(f"background must be one of {', '.join(world.BACKGROUNDS)}, got {name!r}")
        if self.background_end == self.background:
            raise ValueError("background_end equals background: leave it out for a background that stays")
        if not 1 <= len(self.objects) <= 2:
            raise ValueError("a story has one or two objects (the world draws no more)")
        if len({obj.colour for obj in self.objects}) != len(self.objects):
            raise ValueError("the objects of a story have different colours (colour is how they are told apart)")
        return self

    def colours(self) -> dict[str, StoryObject]:
        return {obj.colour: obj for obj in self.objects}


class Story(Storyline):
    """One storyline of the benchmark or the training data: a prompt and the truth it asks for."""

    id: str
    prompt: str
    kind: Kind
    split: Literal["dev", "held_out", "example", "train"]  # example: prompts_in/examples.*; train: generated (``direct2v.director.shape_data``), never in the benchmark


#: The storylines this project knows: the storyline benchmark's (dev and held out) and the shipped
#: examples' (``prompts_in/examples.*``), with their truth. In the package, because the gallery
#: checks a run's videos against them when a prompt is one of them (``known_story``).
KNOWN_STORIES = Path(__file__).resolve().parent / "storylines.jsonl"


def load_stories(path: Path) -> list[Story]:
    """The stories of a JSONL file; ValueError naming the file and line of a bad record or a repeated id."""
    stories: list[Story] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            story = Story.model_validate_json(line)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in error.errors())
            raise ValueError(f"{path}:{number}: not a story ({problems})") from None
        if story.id in seen:
            raise ValueError(f"{path}:{number}: story id {story.id!r} repeated")
        seen.add(story.id)
        stories.append(story)
    return stories


# ---------------------------------------------------------------- the ideal plan


def _step(start: int, end: int, frame: int, frames: int) -> int:
    """One axis of the ideal path: each of the cells from ``start`` to ``end`` for an (almost) equal
    share of the frames, the first frame at ``start`` and the last at ``end`` (two cells over 8
    frames: 3, 2, 3)."""
    span = abs(end - start)
    index = min(span, frame * (span + 1) // max(frames - 1, 1))
    return start + index * (1 if end >= start else -1)


def ideal_cell(obj: StoryObject, frame: int, frames: int) -> Cell:
    """Where ``obj`` is in ``frame`` (0-based) of ``frames``: diagonal moves step both axes."""
    return (_step(obj.start[0], obj.end[0], frame, frames), _step(obj.start[1], obj.end[1], frame, frames))


def is_shown(obj: StoryObject, frame: int, frames: int) -> bool:
    """Whether the story has ``obj`` in ``frame``: an entering object from ``frames // 2`` on, a leaving one before."""
    half = frames // 2
    return not ((obj.enters == "later" and frame < half) or (obj.leaves and frame >= half))


def ideal_scenes(story: Storyline, frames: int, size: str = "small") -> list[world.Scene]:
    """The story's scene in each frame (no jitter; ``size`` small so that objects in neighbouring cells never touch)."""
    half = frames // 2
    scenes = []
    for frame in range(frames):
        objects = tuple(
            world.ShapeObject(obj.shape, obj.colour, size, *ideal_cell(obj, frame, frames))
            for obj in story.objects
            if is_shown(obj, frame, frames)
        )
        background = story.background_end if story.background_end and frame >= half else story.background
        scenes.append(world.Scene(objects, background))
    return scenes


def ideal_frames(story: Storyline, frames: int) -> list[str]:
    """What a perfect director writes: each ideal scene in the world's canonical words ("a red circle
    on the left and a blue square at the top on a white background")."""
    return [world.caption(scene) for scene in ideal_scenes(story, frames)]


# ---------------------------------------------------------------- the storyline as an answer


def storyline_answer(story: Storyline) -> str:
    """``story`` as the shape-story director writes it: compact JSON, cells in words, defaults left
    out (``{"background": "white", "objects": [{"colour": "red", "shape": "circle", "start": "left",
    "end": "right"}]}``); :func:`parse_storyline` reads it back."""
    def described(obj: StoryObject) -> dict:
        fields = {"colour": obj.colour, "shape": obj.shape, "start": cell_name(obj.start), "end": cell_name(obj.end)}
        if obj.enters == "later":
            fields["enters"] = "later"
        if obj.leaves:
            fields["leaves"] = True
        return fields

    answer: dict = {"background": story.background}
    if story.background_end is not None:
        answer["background_end"] = story.background_end
    answer["objects"] = [described(obj) for obj in story.objects]
    return json.dumps(answer)


def parse_storyline(answer: str) -> tuple[Storyline | None, str | None]:
    """An answer as (storyline, None), or (None, what is wrong with it, in one line)."""
    try:
        return Storyline.model_validate_json(answer), None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        return None, f"the answer is not a storyline ({where + ': ' if where else ''}{first['msg']})"


def storyline_schema() -> dict:
    """JSON schema of :func:`storyline_answer`'s answers, every name an enum of the world's (for
    the engine's structured output)."""
    cells = sorted({cell_name((column, row)) for column in range(3) for row in range(3)})
    obj = {"type": "object", "additionalProperties": False, "required": ["colour", "shape", "start", "end"],
           "properties": {"colour": {"enum": list(world.COLOURS)}, "shape": {"enum": list(world.SHAPES)},
                          "start": {"enum": cells}, "end": {"enum": cells}, "enters": {"enum": ["start", "later"]},
                          "leaves": {"type": "boolean"}}}
    return {"type": "object", "additionalProperties": False, "required": ["background", "objects"],
            "properties": {"background": {"enum": list(world.BACKGROUNDS)},
                           "background_end": {"enum": list(world.BACKGROUNDS)},
                           "objects": {"type": "array", "minItems": 1, "maxItems": 2, "items": obj}}}


def normalised(prompt: str) -> str:
    """A prompt without case, punctuation or extra spaces: how prompts are matched to known stories."""
    return " ".join(re.findall(r"[a-z0-9]+", prompt.lower()))


@functools.cache
def _known_by_prompt() -> dict[str, Story]:
    return {normalised(story.prompt): story for story in load_stories(KNOWN_STORIES)}


def known_story(prompt: str) -> Story | None:
    """The known storyline whose prompt this is (case and punctuation aside), if any."""
    return _known_by_prompt().get(normalised(prompt))
