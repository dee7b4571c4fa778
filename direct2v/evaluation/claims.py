"""The paper's claims, each put to a test that could fail it, in the shape world.

Scenarios are aimed at the failure each claim is about (paper Table 1, Figs. 7-8), in three kinds:

* ``develops``: content that is not in frame 1 and must appear (an object appearing halfway, an
  object changing colour, the background turning from white to black, an object growing). If
  Text2Video-Zero (every frame's values from frame 1) "is only faithful to the first prompt", its
  frames 2..F stay near frame 1 (low ``adherence_late``, low ``avg_dist``) where RVM's develop.
* ``keeps``: an object that must not change while another moves or appears (``identity``).
* ``wrong-source``: two objects whose roles differ between frames (they swap places; one of two
  same-shape objects changes colour), so that a value mapped from the wrong position shows as the
  wrong colour in the wrong place (``leaked``): what dual-softmax filtering is meant to stop.

Every frame's ask is exact (objects with colour, shape, size and cell; a background), so the
measures read the pixels with the world's detectors against it, not against parsed words. The
statistics are paired: every variant renders the same seeds, and a claim is judged on the per-seed
difference between two variants with a 95% bootstrap interval (:func:`judge`).

Pure functions over uint8 frames; no model is loaded here (``benchmarks/shape_world.py --claims``
renders and tabulates).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from direct2v.evaluation import metrics
from direct2v.render.encode import to_uint8
from direct2v.shape_world import world

KINDS = ("develops", "keeps", "wrong-source")
#: What :func:`scores` returns, in table order.
MEASURES = ("adherence_late", "avg_dist", "identity", "leaked", "flicker")
#: Area tolerance of an unchanged object, relative to its area in frame 1 (as ``shapes.video_scores``).
AREA_TOLERANCE = 0.3
BOOTSTRAP_RESAMPLES = 10_000


@dataclass(frozen=True)
class FrameAsk:
    """What one frame asks for: its objects and its background."""

    objects: tuple[world.ShapeObject, ...]
    background: str


@dataclass(frozen=True)
class ClaimScenario:
    """One video's plan: the user prompt, each frame's exact ask, and which object must not change.

    ``sized``: the scenario asks for sizes (its captions name them, adherence checks them);
    ``kept``: the index, in every frame's objects, of the object that must stay as it is (keeps).
    """

    kind: str
    name: str
    prompt: str
    asks: tuple[FrameAsk, ...]
    sized: bool = False
    kept: int | None = None

    @property
    def frames(self) -> list[str]:
        """The frame prompts: the world's canonical words for each ask."""
        return [describe(ask, self.sized) for ask in self.asks]


def describe(ask: FrameAsk, sized: bool = False) -> str:
    """The canonical caption of an ask (``world.caption``'s words, with sizes when ``sized``)."""
    parts = [world.object_phrase(obj, None, with_size=sized) for obj in ask.objects]
    return " and ".join(parts) + f" on a {ask.background} background"


def _object(colour: str, shape: str, cell: tuple[int, int], size: str = "large") -> world.ShapeObject:
    return world.ShapeObject(shape=shape, colour=colour, size=size, column=cell[0], row=cell[1])


def scenarios(seed: int, frames: int = 8) -> list[ClaimScenario]:
    """The claim scenarios of one seed, two per kind and four that develop; colours, shapes and
    backgrounds drawn from ``seed`` (the same seed always gives the same plans)."""
    rng = np.random.default_rng([seed, 1618])
    c1, c2, c3 = (str(c) for c in rng.permutation(list(world.COLOURS))[:3])
    s1, s2 = (world.SHAPES[i] for i in rng.integers(len(world.SHAPES), size=2))
    background = ("white", "gray")[int(rng.integers(2))]  # black is the night the background scenario turns to
    half = frames // 2
    left, centre, right = (0, 1), (1, 1), (2, 1)

    def over(ask_of_frame) -> tuple[FrameAsk, ...]:
        return tuple(ask_of_frame(f, f >= half) for f in range(frames))

    def path(f: int, cells: Sequence[tuple[int, int]]) -> tuple[int, int]:
        return cells[min(len(cells) - 1, f * len(cells) // frames)]

    a = _object(c1, s1, left)
    return [
        ClaimScenario("develops", "appears", f"a {c1} {s1} on the left, then a {c2} {s2} appears on the right",
                      over(lambda f, late: FrameAsk((a, _object(c2, s2, right)) if late else (a,), background))),
        ClaimScenario("develops", "recolours", f"a {c1} {s1} in the center turns {c2}",
                      over(lambda f, late: FrameAsk((_object(c2 if late else c1, s1, centre),), background))),
        ClaimScenario("develops", "night falls", f"a {c1} {s1} in the center while the white background turns black",
                      over(lambda f, late: FrameAsk((_object(c1, s1, centre),), "black" if late else "white"))),
        ClaimScenario("develops", "grows", f"a small {c1} {s1} in the center grows large",
                      over(lambda f, late: FrameAsk((_object(c1, s1, centre, "large" if late else "small"),),
                                                    background)), sized=True),
        ClaimScenario("keeps", "static and mover",
                      f"a {c1} {s1} stays at the top left while a {c2} {s2} moves along the bottom from left to right",
                      over(lambda f, late: FrameAsk((_object(c1, s1, (0, 0)),
                                                     _object(c2, s2, path(f, [(0, 2), (1, 2), (2, 2)]))), background)),
                      kept=0),
        ClaimScenario("keeps", "static and newcomer", f"a {c1} {s1} stays on the right, then a {c2} {s2} appears "
                      "at the bottom left",
                      over(lambda f, late: FrameAsk((_object(c1, s1, right),) + ((_object(c2, s2, (0, 2)),) if late
                                                                                  else ()), background)), kept=0),
        ClaimScenario("wrong-source", "swap", f"a {c1} {s1} on the left and a {c2} {s2} on the right swap places",
                      over(lambda f, late: FrameAsk((_object(c1, s1, right if late else left),
                                                     _object(c2, s2, left if late else right)), background))),
        ClaimScenario("wrong-source", "one of two recolours",
                      f"a {c1} {s1} on the left and a {c2} {s1} on the right; the left one turns {c3}",
                      over(lambda f, late: FrameAsk((_object(c3 if late else c1, s1, left), _object(c2, s1, right)),
                                                    background))),
    ]


# --- measures ------------------------------------------------------------------------------------

_AREA_PER_HALF_WIDTH = {"circle": np.pi, "square": 4.0, "triangle": 2.0}  # area / r^2 of each drawn shape


def size_of(detection: world.Detection) -> str:
    """``small`` or ``large``: the drawn size whose area is nearer (geometrically) to the detection's."""
    per = _AREA_PER_HALF_WIDTH[detection.shape]
    small, large = (per * r * r for r in (world.SIZES["small"], world.SIZES["large"]))
    return "large" if detection.area >= np.sqrt(small * large) else "small"


def frame_adherence(detections: Sequence[world.Detection], image: np.ndarray, ask: FrameAsk, sized: bool) -> float:
    """The share of the frame's asks met: each object found with its colour in its cell (and its
    size, when ``sized``), and the background."""
    met = []
    for obj in ask.objects:
        found = world.find(detections, obj.colour)
        hit = found is not None and found.cell == obj.cell
        if sized:
            hit = hit and size_of(found) == obj.size
        met.append(hit)
    met.append(world.detect_background(image) == ask.background)
    return float(np.mean(met))


def frame_distance(frames: np.ndarray) -> float:
    """Avg. Dist.: mean over frames 2..F of the mean absolute pixel difference to frame 1 (0-1 scale)."""
    pixels = to_uint8(frames).astype(np.float32) / 255.0
    return float(np.abs(pixels[1:] - pixels[:1]).mean())


def kept_identity(detections: Sequence[Sequence[world.Detection]], scenario: ClaimScenario) -> float:
    """The share of frames 2..F showing the kept object as frame 1 shows it: its colour, in its
    asked cell, with its asked shape and its frame-1 area within ``AREA_TOLERANCE``. 0 when frame 1
    does not show it; NaN for a scenario without a kept object."""
    if scenario.kept is None:
        return float("nan")
    wanted = scenario.asks[0].objects[scenario.kept]
    first = world.find(detections[0], wanted.colour)
    if first is None:
        return 0.0
    same = []
    for found in detections[1:]:
        seen = world.find(found, wanted.colour)
        same.append(seen is not None and seen.cell == wanted.cell and seen.shape == wanted.shape
                    and abs(seen.area - first.area) <= AREA_TOLERANCE * first.area)
    return float(np.mean(same))


def cell_box(cell: tuple[int, int], size: int = world.IMAGE_SIZE) -> tuple[slice, slice]:
    """The pixels of a grid cell (rows, columns)."""
    edges = [round(i * size / 3) for i in range(4)]
    return slice(edges[cell[1]], edges[cell[1] + 1]), slice(edges[cell[0]], edges[cell[0] + 1])


def leaked(image: np.ndarray, ask: FrameAsk) -> float:
    """The mean, over the asked objects of a frame with two or more, of the share of its cell's
    pixels painted with another asked object's colour; NaN for a frame asking one object."""
    if len(ask.objects) < 2:
        return float("nan")
    classes = world.classify_pixels(to_uint8(image[None])[0])
    index = {name: i for i, name in enumerate(world.COLOURS)}
    shares = []
    for obj in ask.objects:
        others = [index[o.colour] for o in ask.objects if o.colour != obj.colour]
        region = classes[cell_box(obj.cell)]
        shares.append(float(np.isin(region, others).mean()))
    return float(np.mean(shares))


def scores(frames: np.ndarray, scenario: ClaimScenario) -> dict[str, float]:
    """One rendered video against its scenario (``frames``: uint8 or [0, 1] float ``(F, H, W, 3)``).

    * ``adherence_late``: :func:`frame_adherence` over frames 2..F (frame 1 is rendered alone by
      every Text2Video-Zero-schedule variant, so what develops is in the later frames);
    * ``avg_dist``: :func:`frame_distance`;
    * ``identity``: :func:`kept_identity` (keeps scenarios, NaN elsewhere);
    * ``leaked``: :func:`leaked` over frames 2..F that ask two objects (NaN if none do);
    * ``flicker``: ``metrics.flicker``.
    """
    frames = to_uint8(frames)
    if len(frames) != len(scenario.asks) or len(frames) < 2:
        raise ValueError(f"{len(frames)} frames for a scenario of {len(scenario.asks)}; need 2 or more of each")
    detections = [world.detect(frame) for frame in frames]
    late = range(1, len(frames))
    leaks = [leaked(frames[f], scenario.asks[f]) for f in late]
    leaks = [value for value in leaks if not np.isnan(value)]
    return {
        "adherence_late": float(np.mean([frame_adherence(detections[f], frames[f], scenario.asks[f], scenario.sized)
                                         for f in late])),
        "avg_dist": frame_distance(frames),
        "identity": kept_identity(detections, scenario),
        "leaked": float(np.mean(leaks)) if leaks else float("nan"),
        "flicker": metrics.flicker(frames.astype(np.float32) / 255.0),
    }


# --- statistics ----------------------------------------------------------------------------------


def interval(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its 95% percentile-bootstrap interval (NaNs left out;
    all NaN for no values)."""
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(data.size, size=(resamples, data.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(low), float(high)


def paired_interval(treated: Sequence[float], baseline: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> tuple[float, float, float]:
    """The mean of the per-video differences ``treated - baseline`` (the same seeds and scenarios,
    in the same order) and its 95% bootstrap interval; pairs with a NaN side are left out."""
    a, b = np.asarray(treated, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must align: {a.shape} and {b.shape}")
    return interval(a - b, resamples, seed)


def verdict(low: float, high: float, direction: int) -> str:
    """``holds here`` when the interval excludes 0 in the claimed ``direction`` (+1: treated
    higher), ``refuted here`` when it excludes 0 the other way, else ``not shown``."""
    if np.isnan(low) or np.isnan(high):
        return "not shown"
    if (low > 0 and direction > 0) or (high < 0 and direction < 0):
        return "holds here"
    if (low > 0 and direction < 0) or (high < 0 and direction > 0):
        return "refuted here"
    return "not shown"


@dataclass(frozen=True)
class Claim:
    """One claim's test: on ``kind``'s scenarios, ``measure`` of ``treated`` minus ``baseline``,
    expected of sign ``direction``."""

    claim: str
    kind: str
    measure: str
    treated: str
    baseline: str
    direction: int


CLAIMS = (
    Claim("per-frame prompts make the video develop", "develops", "adherence_late", "t2v-z-frames", "t2v-z", +1),
    Claim("RVM lets content develop where T2V-Z stays faithful to frame 1", "develops", "adherence_late", "rvm",
          "t2v-z-frames", +1),
    Claim("RVM's later frames move away from frame 1 (T2V-Z's stay near it)", "develops", "avg_dist", "rvm",
          "t2v-z-frames", +1),
    Claim("RVM keeps what must not change (consistency)", "keeps", "identity", "rvm", "independent", +1),
    Claim("DSF stops values mapped from the wrong place", "wrong-source", "leaked", "rvm-dsf", "rvm", -1),
)


def judge(claim: Claim, results: dict[str, dict[str, list[dict[str, float]]]]) -> dict:
    """``results[kind][variant]``: the scores of every video, in the same (seed, scenario) order for
    every variant. The claim's paired difference, its interval and verdict."""
    treated = [video[claim.measure] for video in results[claim.kind][claim.treated]]
    baseline = [video[claim.measure] for video in results[claim.kind][claim.baseline]]
    mean, low, high = paired_interval(treated, baseline)
    return {"claim": claim.claim, "kind": claim.kind, "measure": claim.measure,
            "test": f"{claim.treated} - {claim.baseline}", "difference": mean, "low": low, "high": high,
            "pairs": int(np.sum(~np.isnan(np.asarray(treated, float) - np.asarray(baseline, float)))),
            "verdict": verdict(low, high, claim.direction)}
