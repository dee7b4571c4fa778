"""Video metrics as pure functions on arrays: no model, no files (``evaluate`` supplies those).

* **CLIP score**: cosine similarity between a frame's image embedding and a text embedding (the
  raw cosine, not CLIPScore's ``2.5 * max(cos, 0)``; the paper's Table 1 values, ~0.29-0.32 for
  SD 1.5, are raw cosines). Per frame, against the frame's own prompt and against the user prompt.
* **Avg. Dist.**: how far the later frames' scores drift from the first frame's,
  ``mean_{f>1} |s_1 - s_f|`` (paper Sec. 4.2: "the average L1 distance between frame 1 and the
  other frames"). A method that only follows the first prompt has a high first score and lower
  later ones, hence a large Avg. Dist.

  The numbers *printed* in the paper's Table 1 are this sum divided by F instead of F - 1 (frame 1
  counted with distance 0), applied to the per-frame-index averages: that reproduces all four
  published values to 4 decimals (T2V-Z 0.0272, TAV 0.0235, RVM 0.0057, RVM+DSF 0.0067), while
  dividing by F - 1 gives 0.0311, 0.0268, 0.0065, 0.0077. ``avg_dist(..., include_first=True)``
  is that convention; the summary table prints both.
* **Consistency**: cosine similarity of consecutive frames' CLIP image embeddings (1 = the same
  picture as far as CLIP can tell); a video's value is the mean over its F - 1 pairs.
* **Flicker** (model-free): the mean absolute difference of consecutive frames' luminance, per
  pixel, on a 0-1 scale, averaged over pixels and pairs. Luminance is Rec. 601 luma
  ``Y = 0.299 R + 0.587 G + 0.114 B`` (the matrix the H.264 encoder applies). 0 = a still image,
  1 = every pixel jumps between black and white each frame. It counts every change, motion
  included, so it is a relative QC signal (compare videos made with the same settings), not an
  absolute quality score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def normalize(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64). A zero row stays zero."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(embeddings, axis=-1, keepdims=True)
    return embeddings / np.where(norms == 0.0, 1.0, norms)


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-frame cosine similarity: (F, D) images with (F, D) texts row by row, or with one (D,)/(1, D) text."""
    images = normalize(np.atleast_2d(image_embeddings))
    texts = normalize(np.atleast_2d(text_embeddings))
    if texts.shape[0] not in (1, images.shape[0]) or texts.shape[1] != images.shape[1]:
        raise ValueError(f"cannot pair {images.shape} image embeddings with {texts.shape} text embeddings")
    return np.sum(images * texts, axis=-1)


def avg_dist(scores: Sequence[float] | np.ndarray, include_first: bool = False) -> float:
    """``mean_{f>1} |s_1 - s_f|``; with ``include_first`` divided by F (the paper's printed Table 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size < 2:
        raise ValueError(f"avg_dist needs a 1-D sequence of at least 2 scores, got shape {scores.shape}")
    total = float(np.sum(np.abs(scores[0] - scores[1:])))
    return total / (scores.size if include_first else scores.size - 1)


def consecutive_consistency(image_embeddings: np.ndarray) -> np.ndarray:
    """(F - 1,) cosine similarities of frame f and f + 1's embeddings."""
    embeddings = normalize(image_embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"consistency needs (F >= 2, D) embeddings, got shape {embeddings.shape}")
    return np.sum(embeddings[:-1] * embeddings[1:], axis=-1)


def luminance(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) RGB frames -> (F, H, W) Rec. 601 luma in [0, 1]. uint8 is read as 0-255, floats as 0-1."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (F, H, W, 3), got {frames.shape}")
    scale = 255.0 if frames.dtype == np.uint8 else 1.0
    return (frames.astype(np.float64) / scale) @ LUMA_WEIGHTS


def flicker_pairs(frames: np.ndarray) -> np.ndarray:
    """(F - 1,) mean absolute luma difference of each consecutive pair of frames, 0-1 scale."""
    luma = luminance(frames)
    if luma.shape[0] < 2:
        raise ValueError("flicker needs at least 2 frames")
    return np.abs(np.diff(luma, axis=0)).mean(axis=(1, 2))


def flicker(frames: np.ndarray) -> float:
    """The video's flicker score: the mean of ``flicker_pairs`` (see the module docstring)."""
    return float(flicker_pairs(frames).mean())


def table_rows(per_video_scores: Sequence[Sequence[float]]) -> list[tuple[str, float, int]]:
    """Paper-Table-1-style rows from each video's per-frame scores: ``(label, value, n_videos)``.

    One row per frame index (the mean over the videos that have that frame), then ``Avg.`` (the
    mean of those rows), ``Avg. Dist.`` (``avg_dist`` of those rows) and ``Avg. Dist. (/F)`` (the
    convention of the paper's printed numbers). Empty input gives no rows.
    """
    videos = [np.asarray(scores, dtype=np.float64) for scores in per_video_scores if len(scores)]
    if not videos:
        return []
    longest = max(video.size for video in videos)
    rows: list[tuple[str, float, int]] = []
    means = []
    for index in range(longest):
        values = [float(video[index]) for video in videos if video.size > index]
        means.append(float(np.mean(values)))
        rows.append((str(index + 1), means[-1], len(values)))
    rows.append(("Avg.", float(np.mean(means)), len(videos)))
    if len(means) >= 2:
        rows.append(("Avg. Dist.", avg_dist(means), len(videos)))
        rows.append(("Avg. Dist. (/F)", avg_dist(means, include_first=True), len(videos)))
    return rows


def markdown_table(columns: dict[str, list[tuple[str, float, int]]], digits: int = 4) -> str:
    """Side-by-side Markdown table: one column per method/run, rows matched by label (as Table 1)."""
    labels: list[str] = []
    for rows in columns.values():
        for label, _, _ in rows:
            if label not in labels:
                labels.append(label)
    frame_labels = sorted((lb for lb in labels if lb.isdigit()), key=int)
    ordered = frame_labels + [lb for lb in labels if not lb.isdigit()]
    lookup = {name: {label: value for label, value, _ in rows} for name, rows in columns.items()}
    lines = ["| Frame # | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in ordered:
        cells = []
        for name in columns:
            value = lookup[name].get(label)
            cells.append("" if value is None or math.isnan(value) else f"{value:.{digits}f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
