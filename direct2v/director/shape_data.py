"""Training examples for the shape director: a random story, a prompt in everyday English, and the answer.

The shape director (SmolLM2-135M-Instruct with a LoRA adapter, ``shape_training``) is taught
to answer the director's own request (``director.instructions.shape_instruction_text``, template
``shapes``) with the list of frame descriptions a perfect director writes: ``json.dumps`` of
:func:`~direct2v.shape_world.stories.ideal_frames`, the very function the storyline benchmark
calls perfect. So the model learns the world's canonical captions, frame by frame, and a video
moves when its prompt says so.

* :func:`random_story`: a story of one of the eight kinds (``stories.KINDS``) with random colours,
  shapes, cells and backgrounds, like the benchmark's: two objects never share a cell in any frame
  of the ideal plan, an object that enters later or leaves always has a second one beside it (no
  frame is empty);
* :func:`~direct2v.shape_world.story_prompts.story_prompt`: one sentence asking for that story
  (the paraphrase grammar has a module of its own);
* :func:`examples` / :func:`random_example`: the chat message and answer text, with the frame count
  and frame rate drawn too.

No generated prompt equals a benchmark prompt (compared without case and punctuation: they are
excluded, see :func:`benchmark_prompts`), and :func:`held_out_coverage` says which content words
of the held-out prompts the grammar can produce at all (for transparency; the grammar is not tuned
toward them).

Pure and seeded: the same ``numpy.random.Generator`` state gives the same stories and prompts.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from direct2v.director.instructions import shape_instruction_text, storyline_instruction_text
from direct2v.shape_world import world
from direct2v.shape_world.stories import (
    KINDS,
    KNOWN_STORIES,
    Cell,
    Story,
    StoryObject,
    ideal_cell,
    ideal_frames,
    is_shown,
    load_stories,
    normalised,
    storyline_answer,
)
from direct2v.shape_world.story_prompts import pick, story_prompt

#: The stories training must never show: the benchmark's storylines and the shipped examples.
BENCHMARK_STORIES = KNOWN_STORIES
#: Frame counts a story is planned for, and how often (8, the default, most).
FRAMES_CHOICES = (4, 8, 16)
FRAMES_WEIGHTS = {4: 1.0, 8: 2.0, 16: 1.0}
#: Frame rates written into the request (the default run's 2 fps most often); the answer does not depend on it.
FPS_CHOICES = (1, 2, 2, 2, 4, 8)
#: How often each kind is drawn, relative to the others (a training setting: ``kind_weights``).
#: Every kind alike: drawing the two-object kinds twice as often (the committed adapter misses most
#: two-object stories) told no more held-out stories (22/32 either way; measured 2026-12-06,
#: docs/shape-world.md).
KIND_WEIGHTS = dict.fromkeys(KINDS, 1.0)
#: Frame counts every generated story is checked at: no two objects in one cell in any frame of any of them.
CHECKED_FRAMES = (4, 6, 8, 12, 16, 24)

CELLS: tuple[Cell, ...] = tuple((column, row) for row in range(3) for column in range(3))


class Example(NamedTuple):
    """One training example: the story, the request's frame count and rate, the chat (one user
    message, exactly what the director sends) and the answer the model learns to write."""

    story: Story
    frames: int
    fps: int
    messages: list[dict]
    answer: str


# ---------------------------------------------------------------- stories


def _other_cell(rng: np.random.Generator, cell: Cell, same_row: bool = False, same_column: bool = False) -> Cell:
    choices = [c for c in CELLS if c != cell and (not same_row or c[1] == cell[1]) and (not same_column or c[0] == cell[0])]
    return pick(rng, choices)


def _moving_cells(rng: np.random.Generator, how: str) -> tuple[Cell, Cell]:
    """A start and an end cell: ``across`` (one row), ``vertical`` (one column), ``diagonal`` (both
    axes change) or ``any`` (any two different cells)."""
    start = pick(rng, CELLS)
    if how == "across":
        return start, _other_cell(rng, start, same_row=True)
    if how == "vertical":
        return start, _other_cell(rng, start, same_column=True)
    if how == "diagonal":
        return start, pick(rng, [c for c in CELLS if c[0] != start[0] and c[1] != start[1]])
    return start, _other_cell(rng, start)


def _object(rng: np.random.Generator, colour: str, start: Cell, end: Cell | None = None, **extra) -> StoryObject:
    return StoryObject(colour=colour, shape=pick(rng, world.SHAPES), start=start, end=end or start, **extra)


def collides(story: Story, frame_counts: Iterable[int] = CHECKED_FRAMES) -> bool:
    """Whether two objects of ``story`` share a cell in some frame of its ideal plan at any of
    ``frame_counts`` (the cells of ``ideal_scenes``, read from ``ideal_cell`` and ``is_shown`` without drawing)."""
    if len(story.objects) < 2:
        return False
    return _paths_meet(story.objects, tuple(frame_counts))


@functools.lru_cache(maxsize=65536)
def _paths_meet(objects: tuple[StoryObject, ...], frame_counts: tuple[int, ...]) -> bool:
    for frames in frame_counts:
        for frame in range(frames):
            cells = [ideal_cell(obj, frame, frames) for obj in objects if is_shown(obj, frame, frames)]
            if len(set(cells)) != len(cells):
                return True
    return False


def random_story(rng: np.random.Generator, kind: str, number: int = 0) -> Story:
    """A story of ``kind`` with random colours, shapes, cells and backgrounds (redrawn until no two
    objects share a cell in any frame of the ideal plan). Its prompt is filled in by :func:`story_prompt`."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    while True:
        colours = [str(c) for c in rng.permutation(list(world.COLOURS))[:2]]
        background = pick(rng, list(world.BACKGROUNDS))
        background_end = None
        if kind in ("across", "vertical", "diagonal"):
            objects = [_object(rng, colours[0], *_moving_cells(rng, kind))]
        elif kind == "appears":
            first = _object(rng, colours[0], *_moving_cells(rng, "any")) if rng.random() < 0.3 else _object(
                rng, colours[0], pick(rng, CELLS))
            objects = [first, _object(rng, colours[1], pick(rng, CELLS), enters="later")]
        elif kind == "disappears":
            first = _object(rng, colours[0], *_moving_cells(rng, "any")) if rng.random() < 0.3 else _object(
                rng, colours[0], pick(rng, CELLS))
            objects = [first, _object(rng, colours[1], pick(rng, CELLS), leaves=True)]
        elif kind == "static_and_moving":
            objects = [_object(rng, colours[0], pick(rng, CELLS)), _object(rng, colours[1], *_moving_cells(rng, "any"))]
        elif kind == "two_moving":
            objects = [_object(rng, colours[0], *_moving_cells(rng, "any")),
                       _object(rng, colours[1], *_moving_cells(rng, "any"))]
        else:  # background_change: one or two objects, each still or moving
            count = 1 if rng.random() < 0.6 else 2
            objects = [_object(rng, colour, *(_moving_cells(rng, "any") if rng.random() < 0.5 else (pick(rng, CELLS),)))
                       for colour in colours[:count]]
            background_end = pick(rng, [b for b in world.BACKGROUNDS if b != background])
        if rng.random() < 0.5:
            objects.reverse()  # the changing object is not always the second one
        story = Story(id=f"generated-{kind}-{number}", prompt="", kind=kind, split="train", background=background,
                      background_end=background_end, objects=tuple(objects))
        if not collides(story):
            return story


# ---------------------------------------------------------------- examples


def benchmark_prompts(path: Path = BENCHMARK_STORIES) -> frozenset[str]:
    """The benchmark's prompts (dev, held-out and the shipped examples), normalised: never a training prompt."""
    return frozenset(normalised(story.prompt) for story in load_stories(path))


def random_example(rng: np.random.Generator, exclude: Collection[str], frames_choices: Sequence[int] = FRAMES_CHOICES,
                   number: int = 0, kind_weights: Mapping[str, float] = KIND_WEIGHTS,
                   answer: Literal["frames", "storyline"] = "frames") -> Example:
    """One example: a story of a kind drawn by ``kind_weights``, its prompt (never one of ``exclude``, normalised
    prompts), a frame count from ``frames_choices`` (8 weighted double), a frame rate, the request and the answer:
    ``frames``, template ``shapes``'s whole list of descriptions; ``storyline``, template ``storyline``'s JSON story
    (the same draws either way; the storyline's request and answer do not use the frame count and rate)."""
    weights = np.array([kind_weights.get(kind, 0.0) for kind in KINDS])
    if len(set(weights)) == 1:  # every kind alike: the draw the committed adapter's data was made with
        kind = pick(rng, KINDS)
    else:
        kind = KINDS[int(rng.choice(len(KINDS), p=weights / weights.sum()))]
    story = random_story(rng, kind, number)
    prompt = story_prompt(story, rng)
    while normalised(prompt) in exclude:
        prompt = story_prompt(story, rng)
    story = story.model_copy(update={"prompt": prompt})
    weights = np.array([FRAMES_WEIGHTS.get(f, 1.0) for f in frames_choices])
    frames = int(frames_choices[int(rng.choice(len(frames_choices), p=weights / weights.sum()))])
    fps = int(pick(rng, FPS_CHOICES))
    if answer == "storyline":
        messages = [{"role": "user", "content": storyline_instruction_text(prompt)}]
        return Example(story, frames, fps, messages, storyline_answer(story))
    messages = [{"role": "user", "content": shape_instruction_text(prompt, frames, fps)}]
    return Example(story, frames, fps, messages, json.dumps(ideal_frames(story, frames)))


def examples(count: int, seed: int, frames_choices: Sequence[int] = FRAMES_CHOICES,
             exclude: Collection[str] | None = None, kind_weights: Mapping[str, float] = KIND_WEIGHTS,
             answer: Literal["frames", "storyline"] = "frames") -> list[Example]:
    """``count`` examples from ``seed`` (the same list every time); ``exclude``: normalised prompts
    never to produce (default: the benchmark's, :func:`benchmark_prompts`)."""
    exclude = benchmark_prompts() if exclude is None else exclude
    rng = np.random.default_rng(seed)
    return [random_example(rng, exclude, frames_choices, number, kind_weights, answer) for number in range(count)]


# ---------------------------------------------------------------- transparency

#: Words that carry no content (left out of the coverage report).
STOPWORDS = frozenset({"a", "an", "the", "on", "of", "to", "from", "in", "at", "and", "as", "it", "its", "is", "are",
                       "while", "until", "then", "with", "into", "by", "one"})


def content_words(prompts: Iterable[str]) -> set[str]:
    return {word for prompt in prompts for word in re.findall(r"[a-z]+", prompt.lower())} - STOPWORDS


def held_out_coverage(samples: int = 20000, seed: int = 0, path: Path = BENCHMARK_STORIES) -> dict[str, list[str]]:
    """Which content words of the benchmark's held-out prompts the generator produces in ``samples``
    prompts (``produced``) and which it never does (``never``): a report, not a target."""
    held_out = content_words(s.prompt for s in load_stories(path) if s.split == "held_out")
    rng = np.random.default_rng(seed)
    generated = content_words(story_prompt(random_story(rng, pick(rng, KINDS)), rng) for _ in range(samples))
    return {"produced": sorted(held_out & generated), "never": sorted(held_out - generated)}
