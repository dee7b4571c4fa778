"""Shape-world measurements: what the detectors see, against what the prompts ask for.

* :func:`parse_caption` reads the objects a description asks for (colour, shape, grid cell) from
  its words, so any plan, the director's free-form frames included, can be scored;
* :func:`image_scores` scores one image against its caption;
* :func:`video_scores` scores a video against its frame prompts: per-frame adherence (colour and
  position), identity consistency of the tracked object, object-count errors, flicker;
* :func:`video_scenarios` makes the benchmark's plans (an object moving or appearing), with the
  frame prompts a director would write.

Pure functions over uint8 frames; no model is loaded here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from direct2v.evaluation import metrics
from direct2v.render.encode import to_uint8
from direct2v.shape_world import world

_WORD = re.compile(r"[a-z]+")
#: What ``video_scores`` returns, in table order.
VIDEO_MEASURES = ("adherence", "colour", "identity", "count_errors", "flicker")
_COLOUR_OF = {word: name for name, words in world.COLOUR_WORDS.items() if name in world.COLOURS for word in words}
_SHAPE_OF = {word.split()[0]: name for name, words in world.SHAPE_WORDS.items() for word in words}
_SHAPE_OF |= {"circles": "circle", "balls": "circle", "squares": "square", "boxes": "square", "triangles": "triangle",
              "round": "circle", "cube": "square"}


@dataclass(frozen=True)
class Wanted:
    """One object a description asks for; ``column``/``row`` None when it names no position at all."""

    colour: str
    shape: str | None
    column: int | None
    row: int | None


def _position(words: Sequence[str]) -> tuple[int | None, int | None]:
    column = 0 if "left" in words else 2 if "right" in words else None
    row = 0 if ("top" in words or "upper" in words) else 2 if ("bottom" in words or "lower" in words) else None
    central = any(w in words for w in ("center", "centre", "middle", "central"))
    if column is None and row is None and not central:
        return None, None  # no position asked
    # the world's captions name only the axis that is off-centre ("at the top" = top centre,
    # "on the left" = middle left), so an axis left unsaid is the centre one
    return (1 if column is None else column), (1 if row is None else row)


def parse_caption(text: str) -> list[Wanted]:
    """The objects ``text`` asks for, in order: each colour word starts one, the next shape word and
    the position words up to the next colour word belong to it. A background colour ("on a white
    background") is not an object colour, so it is never read as one."""
    words = _WORD.findall(text.lower())
    starts = [i for i, word in enumerate(words) if word in _COLOUR_OF]
    wanted = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(words)
        span = words[start + 1 : stop]
        shape = next((_SHAPE_OF[w] for w in span if w in _SHAPE_OF), None)
        column, row = _position(span)
        wanted.append(Wanted(_COLOUR_OF[words[start]], shape, column, row))
    return wanted


def matches(detection: world.Detection | None, want: Wanted) -> dict[str, bool]:
    """Which of ``want``'s asked attributes ``detection`` has (colour: it exists at all)."""
    if detection is None:
        return {"colour": False, "position": False, "shape": False}
    column, row = detection.cell
    position = (want.column is None or want.column == column) and (want.row is None or want.row == row)
    return {"colour": True, "position": position, "shape": want.shape is None or detection.shape == want.shape}


def image_scores(image: np.ndarray, text: str) -> dict[str, float]:
    """Fractions of the asked objects found with their colour, in their cell, with their shape, and
    whether the number of objects is the asked one."""
    wanted = parse_caption(text)
    found = world.detect(image)
    hits = [matches(world.find(found, want.colour), want) for want in wanted]
    if not hits:
        return {}
    return {
        "colour": float(np.mean([h["colour"] for h in hits])),
        "position": float(np.mean([h["colour"] and h["position"] for h in hits])),
        "shape": float(np.mean([h["colour"] and h["shape"] for h in hits])),
        "count_ok": float(len(found) == len(wanted)),
    }


def video_scores(frames: np.ndarray, frame_prompts: Sequence[str]) -> dict[str, float]:
    """One video against its frame prompts (``frames``: uint8 or [0, 1] float ``(F, H, W, 3)``).

    * ``adherence``: mean over frames of the asked objects found with their colour in their cell;
      ``colour``: with their colour at all;
    * ``identity``: the tracked object (the first prompt's first object) across the frames that show
      it: the share of those frames where its shape is its most common shape and its area within 30%
      of its median area; 0 when it is never seen;
    * ``count_errors``: share of frames whose number of objects differs from the asked number
      (collapse, duplication, a missing or extra object);
    * ``flicker``: the existing luminance flicker measure (``metrics.flicker``).
    """
    frames = to_uint8(frames)
    detections = [world.detect(frame) for frame in frames]
    adherence, colour, count_errors = [], [], []
    for found, text in zip(detections, frame_prompts):
        wanted = parse_caption(text)
        hits = [matches(world.find(found, want.colour), want) for want in wanted]
        if hits:
            adherence.append(np.mean([h["colour"] and h["position"] for h in hits]))
            colour.append(np.mean([h["colour"] for h in hits]))
        count_errors.append(float(len(found) != len(wanted)))
    first = parse_caption(frame_prompts[0])
    identity = 0.0
    if first:
        tracked = [d for d in (world.find(found, first[0].colour) for found in detections) if d is not None]
        if tracked:
            shape = Counter(d.shape for d in tracked).most_common(1)[0][0]
            median = float(np.median([d.area for d in tracked]))
            stable = [d.shape == shape and abs(d.area - median) <= 0.3 * median for d in tracked]
            identity = float(np.mean(stable)) * len(tracked) / len(frames)
    return {
        "adherence": float(np.mean(adherence)) if adherence else float("nan"),
        "colour": float(np.mean(colour)) if colour else float("nan"),
        "identity": identity,
        "count_errors": float(np.mean(count_errors)),
        "flicker": metrics.flicker(frames.astype(np.float32) / 255.0),
    }


# ---------------------------------------------------------------- benchmark plans


@dataclass(frozen=True)
class Scenario:
    prompt_id: str
    prompt: str
    frames: list[str]


def _phrase(colour: str, shape: str, cell: tuple[int, int]) -> str:
    return f"a {colour} {shape} {world.position_phrase(cell)}"


def _path(frames: int, cells: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``cells`` spread over ``frames`` in order (each cell for an equal share of the frames)."""
    return [cells[min(len(cells) - 1, f * len(cells) // frames)] for f in range(frames)]


def video_scenarios(seed: int, frames: int = 8, background: str | None = None) -> list[Scenario]:
    """Three plans for one seed: an object moving left to right, one moving top to bottom, and a
    second object appearing next to the first halfway. Colours, shapes and background from ``seed``."""
    rng = np.random.default_rng([seed, 2718])
    colours = list(rng.permutation(list(world.COLOURS)))
    shapes = [world.SHAPES[i] for i in rng.integers(len(world.SHAPES), size=2)]
    background = background or list(world.BACKGROUNDS)[rng.integers(len(world.BACKGROUNDS))]
    tail = f" on a {background} background"
    c1, c2 = colours[0], colours[1]
    s1, s2 = shapes
    across = _path(frames, [(0, 1), (1, 1), (2, 1)])
    down = _path(frames, [(1, 0), (1, 1), (1, 2)])
    half = frames // 2
    return [
        Scenario(f"s{seed}-across", f"a {c1} {s1} moves from left to right{tail}",
                 [_phrase(c1, s1, cell) + tail for cell in across]),
        Scenario(f"s{seed}-down", f"a {c1} {s1} moves from the top to the bottom{tail}",
                 [_phrase(c1, s1, cell) + tail for cell in down]),
        Scenario(f"s{seed}-appears", f"a {c1} {s1} on the left, and halfway a {c2} {s2} appears on the right{tail}",
                 [_phrase(c1, s1, (0, 1)) + (f" and {_phrase(c2, s2, (2, 1))}" if f >= half else "") + tail
                  for f in range(frames)]),
    ]


def image_captions(count: int, seed: int = 0, held_out: bool = True) -> list[str]:
    """Single-object captions (canonical wording), cycling through the held-out (colour, shape, cell)
    triples, or with ``held_out=False`` through the triples training shows, in a seeded order: the
    same model scored on both tells drawing a shape apart from composing an unseen combination."""
    rng = np.random.default_rng([seed, 314])
    triples = world.triples(held_out)
    if not held_out:  # 141 of them: a seeded order, so that a short list still spans colours, shapes and cells
        triples = [triples[i] for i in np.random.default_rng([seed, 315]).permutation(len(triples))]
    out = []
    for i in range(count):
        colour, shape, cell = triples[i % len(triples)]
        background = list(world.BACKGROUNDS)[rng.integers(len(world.BACKGROUNDS))]
        out.append(f"{_phrase(colour, shape, cell)} on a {background} background")
    return out


def summarise(scores: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each measure over videos (NaNs left out)."""
    keys = scores[0].keys() if scores else []
    out = {}
    for key in keys:
        values = np.array([s[key] for s in scores], dtype=float)
        values = values[~np.isnan(values)]
        out[key] = (float(values.mean()), float(values.std())) if len(values) else (float("nan"), float("nan"))
    return out
