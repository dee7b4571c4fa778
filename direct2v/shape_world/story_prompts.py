"""Prompts for shape-world stories: one everyday English sentence asking for a story, from a
grammar of many paraphrases (verbs, position words, appearing and disappearing, background
changes, synonyms, word orders). The shape director's training data (``direct2v.director.shape_data``) asks with
these; the benchmark's own prompts were written apart and are never produced.

Pure and seeded: the same ``numpy.random.Generator`` state gives the same prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from direct2v.shape_world import world
from direct2v.shape_world.stories import Cell, Story, StoryObject

#: How often a prompt leaves the background unsaid (the answer then has the default white one).
UNSAID_BACKGROUND_RATE = 0.08
DEFAULT_BACKGROUND = "white"


def pick(rng: np.random.Generator, options: Sequence):
    """One of ``options``, drawn with ``rng``."""
    return options[int(rng.integers(len(options)))]


_SIDE_NOUNS = {"left": ("left", "left side", "left edge"), "right": ("right", "right side", "right edge")}
_CENTRE_NOUNS = ("center", "middle", "centre", "middle of the frame", "center of the frame")
_ROW_WORDS = {0: ("top", "upper"), 2: ("bottom", "lower")}
_SIDE = {0: "left", 2: "right"}


def cell_nouns(cell: Cell) -> tuple[str, ...]:
    """What a place is called after "the": ``left side``, ``top of the frame``, ``upper left corner``."""
    column, row = cell
    if cell == (1, 1):
        return _CENTRE_NOUNS
    if row == 1:
        return _SIDE_NOUNS[_SIDE[column]]
    if column == 1:
        word = _ROW_WORDS[row][0]
        return (word, f"{word} of the frame", f"{word} edge", f"{word} middle", f"{word} center")
    side = _SIDE[column]
    return tuple(f"{row_word} {side}{corner}" for row_word in _ROW_WORDS[row] for corner in (" corner", ""))


def at_phrase(rng: np.random.Generator, cell: Cell) -> str:
    """Where something is: "on the left", "in the upper right corner", "at the top", "in the middle"."""
    column, row = cell
    noun = pick(rng, cell_nouns(cell))
    if cell == (1, 1):
        return f"{pick(rng, ('in the', 'in the', 'at the'))} {noun}"
    if row == 1:
        return f"{pick(rng, ('on the', 'at the', 'by the', 'near the'))} {noun}"
    if column == 1:
        return f"{pick(rng, ('at the', 'near the'))} {noun}"
    return f"{'in the' if noun.endswith('corner') else pick(rng, ('in the', 'at the'))} {noun}"


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _plain_word(cell: Cell, axis: int) -> str:
    """The one word of an axis: left/right/center for columns, top/bottom/middle for rows."""
    return (("left", "center", "right") if axis == 0 else ("top", "middle", "bottom"))[cell[axis]]


_ANY_VERBS = ("moves", "slides", "glides", "drifts", "travels", "crawls", "hops", "zooms", "wanders", "shifts", "heads",
              "goes", "moves slowly", "slowly moves", "slowly drifts", "bounces", "steadily moves")
_UP_VERBS = ("rises", "climbs", "ascends", "floats", "floats up", "drifts up", "moves up", "goes up", "slowly rises")
_DOWN_VERBS = ("sinks", "drops", "falls", "descends", "slides down", "drifts down", "moves down", "goes down",
               "slowly sinks")


def movement(rng: np.random.Generator, obj: StoryObject) -> str:
    """A verb phrase for a moving object: "rolls from the left side over to the right",
    "climbs the left side from the bottom to the top", "drops from the upper left corner down to the lower right"."""
    start, end = obj.start, obj.end
    dx, dy = _sign(end[0] - start[0]), _sign(end[1] - start[1])
    verbs = list(_ANY_VERBS)
    if dy < 0:
        verbs += _UP_VERBS * 2
    elif dy > 0:
        verbs += _DOWN_VERBS * 2
    if obj.shape == "circle" and dy >= 0:
        verbs += ["rolls", "rolls"]
    verb = pick(rng, verbs)
    particle = ("down" if dy > 0 else "up" if dy < 0 else "over") if rng.random() < 0.4 else ""
    if verb.endswith((" up", " down")):
        particle = ""
    if abs(end[0] - start[0]) == 2 or abs(end[1] - start[1]) == 2:
        particle = pick(rng, (particle, particle, "all the way"))
    to = f"{particle} to" if particle else "to"
    style = rng.random()
    shared_row = dy == 0 and start[1] != 1
    shared_column = dx == 0 and start[0] != 1
    if shared_row and style < 0.5:  # "across the top from left to right"
        line = f"{pick(rng, ('across', 'along'))} the {_ROW_WORDS[start[1]][0]}"
        ends = f"from the {_plain_word(start, 0)} to the {_plain_word(end, 0)}"
        if abs(end[0] - start[0]) == 2 and rng.random() < 0.5:
            ends = pick(rng, (f"from {_plain_word(start, 0)} to {_plain_word(end, 0)}",
                               f"{_plain_word(start, 0)} to {_plain_word(end, 0)}"))
        return f"{verb} {line} {ends}" if rng.random() < 0.6 else f"{verb} {ends} {line}"
    if shared_column and style < 0.5:  # "down the left side from top to bottom"
        way = "down" if dy > 0 else "up"
        line = f"{way} the {_SIDE[start[0]]} {pick(rng, ('side', 'edge'))}"
        ends = f"from the {_plain_word(start, 1)} to the {_plain_word(end, 1)}"
        if abs(end[1] - start[1]) == 2 and rng.random() < 0.5:
            ends = f"from {_plain_word(start, 1)} to {_plain_word(end, 1)}"
        verb = pick(rng, ("moves", "slides", "goes", "travels", "drifts", "crawls")) if verb.endswith((" up", " down")) else verb
        return f"{verb} {line} {ends}"
    if dy == 0 and start[1] == 1 and abs(end[0] - start[0]) == 2 and style < 0.3:  # "from left to right"
        return f"{verb} from {_plain_word(start, 0)} to {_plain_word(end, 0)}"
    if dx == 0 and start[0] == 1 and abs(end[1] - start[1]) == 2 and style < 0.3:  # "from top to bottom"
        return f"{verb} from {_plain_word(start, 1)} to {_plain_word(end, 1)}"
    source = f"from the {pick(rng, cell_nouns(start))}"
    target = pick(rng, cell_nouns(end))
    finish = rng.random()
    if finish < 0.6:
        return f"{verb} {source} {to} the {target}"
    if finish < 0.75:
        return f"{verb} {source} until it reaches the {target}"
    if finish < 0.88:
        return f"starts {at_phrase(rng, start)} and {verb} {to} the {target}"
    return f"{verb} {source} and stops {at_phrase(rng, end)}"


_STATIC_VERBS = ("sits", "rests", "stays", "stands", "is", "sits still", "stays still", "keeps still")
#: Said after the place: "a red ball on the left does not move".
_STATIC_AFTER = ("does not move", "stays where it is", "stays still", "never moves", "sits still", "is not moving")
_APPEAR_VERBS = ("appears", "shows up", "pops up", "emerges", "comes into view", "enters", "appears suddenly")
_VANISH_VERBS = ("disappears", "vanishes", "fades away", "leaves", "fades out", "goes away")
#: Only after "then" or "until": "then the red ball is gone".
_GONE = (*_VANISH_VERBS, "is gone")
_TIME = ("later", "halfway through", "halfway", "after a while", "then", "partway through", "a moment later",
         "in the second half", "soon")


def noun_phrase(rng: np.random.Generator, obj: StoryObject, article: str = "a") -> str:
    """"a red ball", "an orange pyramid", "a little violet box" (``article`` "the": "the red ball")."""
    size = pick(rng, ("", "", "", "", "little ", "small ", "tiny ", "big ", "large "))
    colour = pick(rng, world.COLOUR_WORDS[obj.colour])
    shape = pick(rng, ("circle", "ball", "disc", "dot") if obj.shape == "circle" else
                  ("square", "box", "block") if obj.shape == "square" else ("triangle", "pyramid"))
    words = f"{size if article != 'the' else ''}{colour} {shape}"
    if article == "a" and words[0] in "aeiou":
        article = "an"
    return f"{article} {words}"


def the_other(rng: np.random.Generator, obj: StoryObject, other: StoryObject) -> str:
    """A second mention: "the red ball", or "the ball" when the other object is another shape."""
    if obj.shape != other.shape and rng.random() < 0.3:
        return f"the {pick(rng, {'circle': ('circle', 'ball'), 'square': ('square', 'box'), 'triangle': ('triangle',)}[obj.shape])}"
    return noun_phrase(rng, obj, "the")


def _background_word(rng: np.random.Generator, name: str) -> str:
    return pick(rng, world.COLOUR_WORDS.get(name, (name,)))


def background_phrase(rng: np.random.Generator, name: str) -> str:
    """Where it all happens: "on a white background", "against a grey backdrop"."""
    word = _background_word(rng, name)
    return pick(rng, (f"on a {word} background", f"against a {word} background", f"on a {word} backdrop",
                       f"over a {word} background", f"in front of a {word} background", f"on a plain {word} background"))


def background_lead(rng: np.random.Generator, name: str) -> str:
    """A background said first: "On a black backdrop, ", "The background is gray: "."""
    word = _background_word(rng, name)
    return pick(rng, (f"On a {word} backdrop, ", f"On a {word} background, ", f"Against a {word} background, ",
                       f"The background is {word}: ", f"In front of a {word} background, "))


_DARKER = {("white", "black"), ("white", "gray"), ("gray", "black")}


def background_change(rng: np.random.Generator, start: str, end: str) -> tuple[str, str]:
    """(the change as a clause, a mood phrase or ""): "the white background turns black", "night falls"."""
    a, b = _background_word(rng, start), _background_word(rng, end)
    clause = pick(rng, (f"the {a} background turns {b}", f"the {a} background changes to {b}",
                         f"the background goes from {a} to {b}", f"the {a} background becomes {b}",
                         f"the background changes from {a} to {b}", f"the {a} background slowly turns {b}",
                         f"the {a} backdrop fades to {b}", f"the {a} background fades to {b}"))
    mood = ""
    if {start, end} == {"white", "black"} and rng.random() < 0.5:
        mood = pick(rng, ("night falls", "the sky goes dark", "evening comes") if (start, end) in _DARKER
                     else ("day breaks", "morning comes", "the sky lights up"))
    return clause, mood


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def _object_clause(rng: np.random.Generator, obj: StoryObject) -> str:
    """"a red ball sits on the left" / "a red ball rolls from the left to the right"."""
    if obj.static:
        if rng.random() < 0.25:
            return f"{noun_phrase(rng, obj)} {at_phrase(rng, obj.start)} {pick(rng, _STATIC_AFTER)}"
        return f"{noun_phrase(rng, obj)} {pick(rng, _STATIC_VERBS)} {at_phrase(rng, obj.start)}"
    return f"{noun_phrase(rng, obj)} {movement(rng, obj)}"


def _with_background(rng: np.random.Generator, body: str, background: str | None) -> str:
    """``body`` (no capital, no full stop) with its background said first, last, or not at all."""
    if background is None:
        return _capital(body) + "."
    style = rng.random()
    if style < 0.3:
        return background_lead(rng, background) + body + "."
    if style < 0.4:
        return f"{_capital(body)}; the background is {_background_word(rng, background)}."
    return _capital(body) + pick(rng, (" ", ", ")) + background_phrase(rng, background) + "."


def story_prompt(story: Story, rng: np.random.Generator) -> str:
    """One sentence asking for ``story`` in everyday English (a random paraphrase)."""
    objects = story.objects
    # a prompt may leave a white background unsaid: the default (UNSAID_BACKGROUND_RATE of all prompts)
    unsaid = story.background == DEFAULT_BACKGROUND and rng.random() < UNSAID_BACKGROUND_RATE * len(world.BACKGROUNDS)
    background = None if unsaid else story.background
    if story.kind in ("across", "vertical", "diagonal"):
        return _with_background(rng, _object_clause(rng, objects[0]), background)
    if story.kind == "background_change":
        return _background_change_prompt(rng, story)
    if story.kind == "appears":
        stays, comes = (objects[0], objects[1]) if objects[1].enters == "later" else (objects[1], objects[0])
        return _with_background(rng, _appears(rng, stays, comes), background)
    if story.kind == "disappears":
        stays, goes = (objects[0], objects[1]) if objects[1].leaves else (objects[1], objects[0])
        return _with_background(rng, _disappears(rng, stays, goes), background)
    first, second = objects if rng.random() < 0.5 else objects[::-1]
    joiner = pick(rng, (" while ", " as ", ", and ", " and ", ", while ", " while at the same time "))
    return _with_background(rng, _object_clause(rng, first) + joiner + _object_clause(rng, second), background)


def _appears(rng: np.random.Generator, stays: StoryObject, comes: StoryObject) -> str:
    where = at_phrase(rng, comes.start)
    verb = pick(rng, _APPEAR_VERBS)
    time = pick(rng, _TIME)
    style = rng.random()
    if style < 0.35:
        return f"{_object_clause(rng, stays)}, and {time} {noun_phrase(rng, comes)} {verb} {where}"
    if style < 0.6:
        verb = pick(rng, (*_APPEAR_VERBS, "joins it"))
        return f"{_object_clause(rng, stays)} until {noun_phrase(rng, comes)} {verb} {where}"
    if style < 0.8:
        return f"{_object_clause(rng, stays)}; {time} {noun_phrase(rng, comes)} {verb} {where}"
    if stays.static:
        return (f"at first there is only {noun_phrase(rng, stays)} {at_phrase(rng, stays.start)}, then "
                f"{noun_phrase(rng, comes)} {verb} {where}")
    return f"{noun_phrase(rng, comes)} {verb} {where} {time} while {_object_clause(rng, stays)}"


def _disappears(rng: np.random.Generator, stays: StoryObject, goes: StoryObject) -> str:
    verb = pick(rng, _VANISH_VERBS)
    style = rng.random()
    if style < 0.3 and stays.static:
        both = (f"{noun_phrase(rng, stays)} {at_phrase(rng, stays.start)} and {noun_phrase(rng, goes)} "
                f"{at_phrase(rng, goes.start)}")
        if rng.random() < 0.5:
            both = (f"{noun_phrase(rng, goes)} {at_phrase(rng, goes.start)} and {noun_phrase(rng, stays)} "
                    f"{at_phrase(rng, stays.start)}")
        there = pick(rng, ("sit there at first", "are there at first", "are both visible at first", "sit there"))
        return f"{both} {there}, then {the_other(rng, goes, stays)} {pick(rng, _GONE)}"
    if style < 0.6:
        return f"{_object_clause(rng, stays)} while {noun_phrase(rng, goes)} {at_phrase(rng, goes.start)} {verb}"
    if style < 0.8:
        return (f"{noun_phrase(rng, goes)} {at_phrase(rng, goes.start)} {verb} {pick(rng, _TIME)} while "
                f"{_object_clause(rng, stays)}")
    return (f"{_object_clause(rng, stays)}, and {noun_phrase(rng, goes)} {at_phrase(rng, goes.start)} is there "
            f"until {the_other(rng, goes, stays)} {pick(rng, _GONE)}")


def _background_change_prompt(rng: np.random.Generator, story: Story) -> str:
    clause, mood = background_change(rng, story.background, story.background_end)
    if len(story.objects) == 1:
        things = _object_clause(rng, story.objects[0])
    else:
        first, second = story.objects
        if first.static and second.static and rng.random() < 0.5:
            things = (f"{noun_phrase(rng, first)} {at_phrase(rng, first.start)} and {noun_phrase(rng, second)} "
                      f"{at_phrase(rng, second.start)} {pick(rng, ('stay where they are', 'sit still', 'stay still', 'rest'))}")
        else:
            things = f"{_object_clause(rng, first)} and {_object_clause(rng, second)}"
    style = rng.random()
    if mood and style < 0.4:
        return _capital(f"{mood}: {clause} {pick(rng, ('while', 'as', 'and'))} {things}.")
    if mood and style < 0.6:
        return f"As {mood}, {clause} and {things}."
    if style < 0.8:
        return _capital(f"{things} {pick(rng, ('while', 'as'))} {clause}") + (f", as if {mood}." if mood else ".")
    return _capital(f"{things}, and {pick(rng, _TIME)} {clause}.")
