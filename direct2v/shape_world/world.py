"""The shape world: flat-coloured shapes on a plain background, their captions, and exact detectors.

A scene is one or two objects (a shape, a colour, a size, a cell of a 3 x 3 grid, a small jitter)
on one of a few backgrounds, drawn at 64 x 64 px. Captions are written from many templates and
paraphrases of the same attributes ("a red circle on the left", "a big red ball near the left
edge on a white background"), so that free-form frame descriptions using these words are
understood. The detectors read the pixels back (nearest palette colour, connected components,
fill ratio of the bounding box): they are the ground truth of every shape-world metric, with no
learned model involved.

Everything here is pure and seeded: the same ``numpy.random.Generator`` state gives the same
scenes and captions.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 7, "large": 11}  # half the object's width in pixels
COLUMNS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")
CELL_CENTRES = (12, 32, 52)  # pixel centre of column / row 0, 1, 2
JITTER = 2
MIN_AREA = 12  # pixels: a smaller blob of an object colour is noise, not an object
MIN_CORE = 4  # pixels whose 3 x 3 neighbourhood is all the blob's colour: a decoder's colour fringe has none

SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc", "round shape", "dot"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangle shape", "pyramid"),
}
COLOUR_WORDS = {name: (name,) for name in COLOURS} | {"purple": ("purple", "violet"), "gray": ("gray", "grey")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
COLUMN_PHRASES = {
    "left": ("on the left", "at the left", "near the left edge", "on the left side"),
    "center": ("in the center", "in the middle"),
    "right": ("on the right", "at the right", "near the right edge", "on the right side"),
}
ROW_PHRASES = {
    "top": ("at the top", "near the top", "in the upper part"),
    "bottom": ("at the bottom", "near the bottom", "in the lower part"),
}


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    size: str
    column: int  # 0 left, 1 center, 2 right
    row: int  # 0 top, 1 middle, 2 bottom
    dx: int = 0  # jitter in pixels
    dy: int = 0

    @property
    def cell(self) -> tuple[int, int]:
        return self.column, self.row

    @property
    def centre(self) -> tuple[int, int]:
        return CELL_CENTRES[self.column] + self.dx, CELL_CENTRES[self.row] + self.dy


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str


@dataclass(frozen=True)
class Detection:
    """One object found in the pixels."""

    colour: str
    shape: str
    x: float  # centroid, pixels
    y: float
    area: int  # pixels
    fill: float  # area / bounding-box area

    @property
    def cell(self) -> tuple[int, int]:
        return cell_of(self.x), cell_of(self.y)


def cell_of(coordinate: float, size: int = IMAGE_SIZE) -> int:
    """The grid column (or row) a pixel coordinate falls in: thirds of the image."""
    return min(2, max(0, int(3 * coordinate / size)))


def is_held_out(colour: str, shape: str, cell: tuple[int, int]) -> bool:
    """About one (colour, shape, cell) triple in seven never appears in training (a fixed hash), so
    the image-level test asks for combinations the model has not seen together."""
    key = f"{colour}|{shape}|{cell[0]}{cell[1]}".encode()
    return zlib.crc32(key) % 7 == 0


def triples(held_out: bool) -> list[tuple[str, str, tuple[int, int]]]:
    """Every (colour, shape, cell) the world can ask for that is held out of training, or that training shows."""
    return [
        (colour, shape, (column, row))
        for colour in COLOURS for shape in SHAPES for column in range(3) for row in range(3)
        if is_held_out(colour, shape, (column, row)) == held_out
    ]


def random_object(rng: np.random.Generator, colour: str | None = None, shape: str | None = None,
                  cell: tuple[int, int] | None = None) -> ShapeObject:
    column, row = cell if cell is not None else (int(rng.integers(3)), int(rng.integers(3)))
    return ShapeObject(
        shape=shape or SHAPES[rng.integers(len(SHAPES))],
        colour=colour or list(COLOURS)[rng.integers(len(COLOURS))],
        size=list(SIZES)[rng.integers(len(SIZES))],
        column=column,
        row=row,
        dx=int(rng.integers(-JITTER, JITTER + 1)),
        dy=int(rng.integers(-JITTER, JITTER + 1)),
    )


def training_scene(rng: np.random.Generator, two_object_rate: float = 0.4) -> Scene:
    """A random scene of the training distribution: one or two objects of different colours in
    different cells, none of them a held-out (colour, shape, cell) triple."""
    count = 2 if rng.random() < two_object_rate else 1
    objects: list[ShapeObject] = []
    while len(objects) < count:
        candidate = random_object(rng)
        if is_held_out(candidate.colour, candidate.shape, candidate.cell):
            continue
        if any(o.colour == candidate.colour or o.cell == candidate.cell for o in objects):
            continue
        objects.append(candidate)
    return Scene(tuple(objects), list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))])


def draw(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene as uint8 pixels ``(size, size, 3)`` (no anti-aliasing: every pixel is a palette colour)."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    pen = ImageDraw.Draw(image)
    for obj in scene.objects:
        x, y = obj.centre
        r = SIZES[obj.size]
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif obj.shape == "square":
            pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
        else:
            pen.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    return np.asarray(image)


def position_phrase(cell: tuple[int, int], rng: np.random.Generator | None = None) -> str:
    """Words for a grid cell; the first paraphrase of each part without ``rng``."""
    pick = (lambda options: options[0]) if rng is None else (lambda options: options[rng.integers(len(options))])
    column, row = COLUMNS[cell[0]], ROWS[cell[1]]
    if row == "middle":
        return pick(COLUMN_PHRASES[column])
    if column == "center":
        return pick(ROW_PHRASES[row])
    style = 0 if rng is None else int(rng.integers(3))
    if style == 0:
        return f"in the {row} {column} corner"
    if style == 1:
        return f"at the {row} {column}"
    return f"{pick(ROW_PHRASES[row])} {pick(COLUMN_PHRASES[column])}"


def object_phrase(obj: ShapeObject, rng: np.random.Generator | None = None, with_size: bool | None = None) -> str:
    pick = (lambda options: options[0]) if rng is None else (lambda options: options[rng.integers(len(options))])
    if with_size is None:
        with_size = rng is not None and rng.random() < 0.5
    size = pick(SIZE_WORDS[obj.size]) + " " if with_size else ""
    return f"a {size}{pick(COLOUR_WORDS[obj.colour])} {pick(SHAPE_WORDS[obj.shape])} {position_phrase(obj.cell, rng)}"


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption of ``scene``: a random paraphrase with ``rng``, the canonical one without."""
    parts = [object_phrase(obj, rng) for obj in scene.objects]
    if rng is None:
        return " and ".join(parts) + f" on a {scene.background} background"
    joined = parts[0] if len(parts) == 1 else [" and ", ", and ", " with "][rng.integers(3)].join(parts)
    background = ""
    if rng.random() < 0.6:
        words = COLOUR_WORDS.get(scene.background, (scene.background,))
        word = words[rng.integers(len(words))]
        background = [f" on a {word} background", f" against a {word} background", f", {word} background"][
            rng.integers(3)]
    lead = ["", "", "", "a picture of ", "an image of ", "there is "][rng.integers(6)]
    return lead + joined + background


# ---------------------------------------------------------------- detectors

_PALETTE_NAMES = list(COLOURS) + [f"bg:{name}" for name in BACKGROUNDS]
_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """Each pixel's nearest palette entry: an index into COLOURS (0..5) or a background (6..8).
    ``image``: uint8 ``(H, W, 3)`` or float in [0, 1]."""
    pixels = image.astype(np.float32)
    if image.dtype != np.uint8:
        pixels = pixels * 255.0
    distances = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a boolean mask: 0 outside, 1..n inside (min-label propagation)."""
    height, width = mask.shape
    big = height * width + 1
    labels = np.where(mask, np.arange(1, height * width + 1).reshape(height, width), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([
            padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]
        ])
        updated = np.where(mask, neighbours, big)
        if np.array_equal(updated, labels):
            break
        labels = updated
    out = np.zeros((height, width), dtype=np.int64)
    for index, value in enumerate(np.unique(labels[mask]), start=1):
        out[labels == value] = index
    return out


def erode(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose whole 3 x 3 neighbourhood is in ``mask``."""
    padded = np.pad(mask, 1, constant_values=False)
    height, width = mask.shape
    core = mask.copy()
    for dy in range(3):
        for dx in range(3):
            core &= padded[dy : dy + height, dx : dx + width]
    return core


def shape_from_fill(fill: float) -> str:
    """A filled bounding box is a square (1.0), a circle fills pi/4 of it, a triangle half."""
    if fill >= 0.88:
        return "square"
    if fill >= 0.64:
        return "circle"
    return "triangle"


def detect(image: np.ndarray, min_area: int = MIN_AREA) -> list[Detection]:
    """Every object in ``image``: one per connected blob of an object colour of at least ``min_area``
    pixels with a solid core (``MIN_CORE``: the thin band where a decoded edge between two colours
    passes through a third, e.g. orange between yellow and black, is not an object), largest first."""
    classes = classify_pixels(image)
    found = []
    for index, colour in enumerate(COLOURS):
        mask = classes == index
        if mask.sum() < min_area:
            continue
        components = label_components(mask)
        core = erode(mask)
        for label in range(1, components.max() + 1):
            blob = components == label
            ys, xs = np.nonzero(blob)
            if len(xs) < min_area or int((core & blob).sum()) < MIN_CORE:
                continue
            box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
            fill = len(xs) / box
            found.append(Detection(colour, shape_from_fill(fill), float(xs.mean()), float(ys.mean()), len(xs), fill))
    return sorted(found, key=lambda d: -d.area)


def detect_background(image: np.ndarray) -> str | None:
    """The most frequent background colour, None when object colours cover most of the image."""
    classes = classify_pixels(image)
    counts = np.bincount(classes.ravel(), minlength=len(_PALETTE_NAMES))
    best = int(counts.argmax())
    return _PALETTE_NAMES[best][3:] if best >= len(COLOURS) else None


def find(detections: Sequence[Detection], colour: str) -> Detection | None:
    """The largest detection of ``colour``, if any."""
    return next((d for d in detections if d.colour == colour), None)
