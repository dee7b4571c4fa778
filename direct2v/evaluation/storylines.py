"""Storylines: does a video tell the story its prompt asks for, from the words of the plan to the pixels?

A story is one or two shape-world objects, each with a start and an end cell (the same cell for a
static one), entering at the start or later and perhaps leaving, on a background that may change
once. The same named checks (:func:`check_story`) score two readings of one video:

* the plan: each frame description read back with ``shapes.parse_caption`` (:func:`observe_plan`),
  i.e. what the renderer is asked to draw in each frame;
* the video: each frame read with the world's exact detectors (:func:`observe_video`).

A plan that passes while its video fails is the renderer's fault; a plan that fails is the
director's. The stories themselves (:class:`~direct2v.shape_world.stories.Story`, ``load_stories``)
and what a perfect director would ask for (``ideal_scenes``, ``ideal_frames``) are the shape
world's, in ``direct2v.shape_world.stories``.

Pure functions; no model is loaded here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from direct2v.evaluation import shapes
from direct2v.render.encode import to_uint8
from direct2v.shape_world import world
from direct2v.shape_world.stories import Cell, Story, StoryObject

#: Every check :func:`check_story` can name, in table order.
CHECKS = ("start", "end", "path", "appears", "disappears", "background", "extras")


# ---------------------------------------------------------------- what a frame shows


@dataclass(frozen=True)
class Seen:
    """One object in one frame: its colour, its shape and cell where the frame says (None: unsaid or ambiguous)."""

    colour: str
    shape: str | None
    cell: Cell | None


@dataclass(frozen=True)
class Observation:
    """What one frame shows: its background (None: not said, or not one background) and its objects."""

    background: str | None
    objects: tuple[Seen, ...]


_WORD = re.compile(r"[a-z]+")
_OBJECT_WORDS = {word for name, words in world.COLOUR_WORDS.items() if name in world.COLOURS for word in words}
_BACKGROUND_OF = {word: name for name in world.BACKGROUNDS for word in world.COLOUR_WORDS.get(name, (name,))}
_BACKGROUND_ALTERNATION = "|".join(_BACKGROUND_OF)
#: "white background", "grey backdrop"; "background is black", "backdrop turns white" (read apart: they may share a word)
_BACKGROUND_NAMED = (
    re.compile(rf"\b({_BACKGROUND_ALTERNATION})\s+(?:background|backdrop)\b"),
    re.compile(
        rf"\b(?:background|backdrop)\s+(?:is|turns|becomes|goes|now)\s+(?:now\s+)?({_BACKGROUND_ALTERNATION})\b"
    ),
)
#: Opposite ends of one axis named for one object ("from the left edge to the right"): no one cell.
_OPPOSITES = (({"left"}, {"right"}), ({"top", "upper"}, {"bottom", "lower"}))


def background_of(text: str) -> str | None:
    """The background colour a frame description names ("on a white background", "against a grey
    backdrop", ", black background", "the background is gray"); None when it names none, or more
    than one ("the white background turns black" is two states, not a frame)."""
    named = {_BACKGROUND_OF[word] for pattern in _BACKGROUND_NAMED for word in pattern.findall(text.lower())}
    return named.pop() if len(named) == 1 else None


def _object_words(text: str) -> list[list[str]]:
    """The words of each object ``shapes.parse_caption`` reads, split the way it splits them (at object colour words)."""
    words = _WORD.findall(text.lower())
    starts = [i for i, word in enumerate(words) if word in _OBJECT_WORDS]
    return [words[start + 1 : stop] for start, stop in zip(starts, [*starts[1:], len(words)])]


def observe_text(text: str) -> Observation:
    """One frame description as :class:`Observation`. Objects are ``shapes.parse_caption``'s (a
    background colour is never one: it reads only the six object colours), their cell None when
    the words name no position or opposite ends of an axis ("slides from the left to the right").
    A named object is shown even in "the red ball is gone": the renderer reads colour words, not negation."""
    objects = []
    for want, words in zip(shapes.parse_caption(text), _object_words(text), strict=True):
        ambiguous = any(a & set(words) and b & set(words) for a, b in _OPPOSITES)
        cell = None if ambiguous or want.column is None else (want.column, want.row)
        objects.append(Seen(want.colour, want.shape, cell))
    return Observation(background_of(text), tuple(objects))


def observe_plan(frame_texts: Sequence[str]) -> list[Observation]:
    """Each frame description of a plan read as the renderer is asked to draw it."""
    return [observe_text(text) for text in frame_texts]


def observe_video(frames: np.ndarray) -> list[Observation]:
    """Each frame (uint8 or [0, 1] float ``(F, H, W, 3)``) as the world's detectors read it: every
    object blob with its detected shape and cell, and the dominant background colour. Frames of
    another size are first averaged down to the world's 64 x 64 (its detectors count pixels and cells at that size)."""
    observations = []
    for frame in to_uint8(frames):
        if frame.shape[:2] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
            size = (world.IMAGE_SIZE, world.IMAGE_SIZE)
            frame = np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BOX))
        found = tuple(Seen(d.colour, d.shape, d.cell) for d in world.detect(frame))
        observations.append(Observation(world.detect_background(frame), found))
    return observations


# ---------------------------------------------------------------- the checks


def _sightings(observation: Observation, colour: str) -> list[Seen]:
    return [seen for seen in observation.objects if seen.colour == colour]


def _cell(observation: Observation, colour: str) -> Cell | None:
    """The one cell ``colour`` is seen in; None when it is not seen, seen without a cell, or in two cells."""
    cells = {seen.cell for seen in _sightings(observation, colour)}
    return cells.pop() if len(cells) == 1 else None


def _follows_path(obj: StoryObject, observations: Sequence[Observation]) -> bool:
    seen = [o for o in observations if _sightings(o, obj.colour)]
    if obj.enters == "start" and not obj.leaves and len(seen) != len(observations):
        return False  # an object the story keeps throughout went missing in some frame
    cells = [_cell(o, obj.colour) for o in seen]
    if any(cell is None for cell in cells):
        return False
    for axis in (0, 1):
        start, end = obj.start[axis], obj.end[axis]
        values = [cell[axis] for cell in cells]
        if any(not min(start, end) <= v <= max(start, end) for v in values):
            return False
        if any((b - a) * (end - start) < 0 for a, b in itertools.pairwise(values)):
            return False  # a step backwards (for a static axis, range already pins it)
    return True


def _presence(observations: Sequence[Observation], colour: str) -> list[bool]:
    return [bool(_sightings(o, colour)) for o in observations]


def checks_for(story: Story) -> tuple[str, ...]:
    """The names of the checks that apply to ``story``, in ``CHECKS`` order: ``appears`` only with an
    object entering later, ``disappears`` only with one leaving, every other check always."""
    entering = any(obj.enters == "later" for obj in story.objects)
    leaving = any(obj.leaves for obj in story.objects)
    return tuple(name for name in CHECKS if (name != "appears" or entering) and (name != "disappears" or leaving))


def check_story(story: Story, observations: Sequence[Observation]) -> dict[str, bool]:
    """The checks that apply to ``story``, each True when the frames (``observe_plan`` or
    ``observe_video``) do what the story asks. "Present at frame 1" means the story's truth
    (``enters="start"``); an object is "in a cell" when every sighting of its colour in that frame
    is in that one cell (seen twice in two cells, or without a position, it is in none).

    * ``start``: every object present from frame 1 is in its start cell in frame 1;
    * ``end``: every object that does not leave is in its end cell in the last frame;
    * ``path``: for each object, over the frames it is seen in, it is always in one cell, and on each
      axis the cells stay between its start and end and never step back toward the start (a static
      axis stays put; a static object stays in its cell); an object that neither enters later nor
      leaves is seen in every frame;
    * ``appears`` (stories with an object entering later): each such object is absent in frame 1,
      present in the last frame, and once present stays present;
    * ``disappears`` (stories with a leaving object): each such object is present in frame 1, absent
      in the last frame, and once gone stays gone;
    * ``background``: every frame shows the asked background; for a changing one: the start colour
      in frame 1, the end colour in the last frame, and at most one change along the frames;
    * ``extras``: no frame shows an object of a colour the story does not have, and every sighting
      that names a shape names the shape of the story's object of its colour (in a video every
      detection has one: ``world.shape_from_fill`` tells the world's three shapes apart exactly on
      its drawings; a second blob of a story colour is not an extra, it fails ``path``).
    """
    if not observations:
        raise ValueError("no frames to check")
    first, last = observations[0], observations[-1]
    objects = story.objects
    checks = {
        "start": all(_cell(first, o.colour) == o.start for o in objects if o.enters == "start"),
        "end": all(_cell(last, o.colour) == o.end for o in objects if not o.leaves),
        "path": all(_follows_path(o, observations) for o in objects),
    }
    if "appears" in checks_for(story):
        entering = [o for o in objects if o.enters == "later"]
        checks["appears"] = all(_starts_then_stays(_presence(observations, o.colour), False) for o in entering)
    if "disappears" in checks_for(story):
        leaving = [o for o in objects if o.leaves]
        checks["disappears"] = all(_starts_then_stays(_presence(observations, o.colour), True) for o in leaving)
    backgrounds = [o.background for o in observations]
    if story.background_end is None:
        checks["background"] = all(b == story.background for b in backgrounds)
    else:
        changes = sum(a != b for a, b in itertools.pairwise(backgrounds))
        checks["background"] = (
            backgrounds[0] == story.background and backgrounds[-1] == story.background_end and changes <= 1
        )
    wanted = story.colours()
    checks["extras"] = all(
        seen.colour in wanted and seen.shape in (None, wanted[seen.colour].shape)
        for o in observations
        for seen in o.objects
    )
    return checks


def _starts_then_stays(presence: list[bool], present_first: bool) -> bool:
    """``presence`` begins as ``present_first``, ends as the opposite, and switches exactly once."""
    switches = sum(a != b for a, b in itertools.pairwise(presence))
    return presence[0] == present_first and presence[-1] != present_first and switches == 1


def tells_story(checks: dict[str, bool]) -> bool:
    """Whether every check that applies passed."""
    return all(checks.values())


def check_plan(story: Story, frame_texts: Sequence[str]) -> dict[str, bool]:
    return check_story(story, observe_plan(frame_texts))


def check_video(story: Story, frames: np.ndarray) -> dict[str, bool]:
    return check_story(story, observe_video(frames))
