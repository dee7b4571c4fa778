"""The metrics on hand-made inputs with known answers (no model)."""

import numpy as np
import pytest

from direct2v.evaluation import metrics

# The paper's Table 1 (frame 1..8 per method), as printed.
PAPER_TABLE_1 = {
    "T2V-Z": [0.3208, 0.2950, 0.2894, 0.2865, 0.2935, 0.2889, 0.2858, 0.2888],
    "TAV": [0.3236, 0.2947, 0.2909, 0.2931, 0.3006, 0.3013, 0.2980, 0.2988],
    "RVM": [0.3143, 0.3026, 0.3056, 0.3123, 0.3137, 0.3052, 0.3103, 0.3052],
    "RVM+DSF": [0.3180, 0.3077, 0.3077, 0.3095, 0.3131, 0.3122, 0.3142, 0.3077],
}
PAPER_AVG = {"T2V-Z": 0.2930, "TAV": 0.3001, "RVM": 0.3087, "RVM+DSF": 0.3113}
PAPER_AVG_DIST = {"T2V-Z": 0.0272, "TAV": 0.0235, "RVM": 0.0057, "RVM+DSF": 0.0067}


def constant_frames(levels, size=(4, 6)):
    """One uniform grey frame per level (0-1), as uint8 (F, H, W, 3)."""
    return np.stack([np.full((*size, 3), round(level * 255), dtype=np.uint8) for level in levels])


def random_frames(count=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(count, 8, 8, 3), dtype=np.uint8)


# -- flicker and luminance -------------------------------------------------------------------------


def test_identical_frames_do_not_flicker():
    frame = random_frames(1)[0]
    assert metrics.flicker(np.stack([frame] * 6)) == 0.0


def test_flicker_of_constant_images_is_the_luma_step():
    assert metrics.flicker(constant_frames([0, 1, 0, 1])) == pytest.approx(1.0)
    assert metrics.flicker(constant_frames([0.2, 0.6])) == pytest.approx((153 - 51) / 255)  # uint8 grey levels
    np.testing.assert_allclose(metrics.flicker_pairs(constant_frames([0, 0.5, 0.5, 0.25])),
                               [128 / 255, 0, 64 / 255], atol=1e-12)  # grey levels 0, 128, 128, 64


def test_luminance_is_rec601_luma_on_a_0_1_scale():
    red, green, blue, white = (np.zeros((1, 1, 1, 3), dtype=np.uint8) for _ in range(4))
    red[..., 0] = green[..., 1] = blue[..., 2] = 255
    white[:] = 255
    assert [metrics.luminance(x).item() for x in (red, green, blue, white)] == pytest.approx([0.299, 0.587, 0.114, 1.0])
    floats = random_frames(2).astype(np.float32) / 255
    np.testing.assert_allclose(metrics.luminance(floats), metrics.luminance(random_frames(2)), atol=1e-6)


def test_reversed_frames_flicker_the_same():
    frames = random_frames(6)
    forward = metrics.flicker_pairs(frames)
    np.testing.assert_allclose(metrics.flicker_pairs(frames[::-1]), forward[::-1])
    assert metrics.flicker(frames[::-1]) == pytest.approx(metrics.flicker(frames))


def test_flicker_needs_two_frames_of_rgb():
    with pytest.raises(ValueError):
        metrics.flicker(random_frames(1))
    with pytest.raises(ValueError):
        metrics.flicker(np.zeros((3, 4, 4)))


# -- CLIP scores and consistency from embeddings ---------------------------------------------------


def test_clip_scores_are_cosines_row_by_row_or_against_one_text():
    images = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    texts = np.array([[5.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(metrics.clip_scores(images, texts), [1.0, 0.0, -1.0], atol=1e-12)
    np.testing.assert_allclose(metrics.clip_scores(images, np.array([0.0, 1.0])), [0.0, 1.0, np.sqrt(0.5)])
    with pytest.raises(ValueError):
        metrics.clip_scores(images, texts[:2])


def test_consistency_of_identical_and_reversed_frames():
    embeddings = np.random.default_rng(1).normal(size=(5, 16))
    np.testing.assert_allclose(metrics.consecutive_consistency(np.stack([embeddings[0]] * 4)), [1.0] * 3)
    forward = metrics.consecutive_consistency(embeddings)
    np.testing.assert_allclose(metrics.consecutive_consistency(embeddings[::-1]), forward[::-1])
    orthogonal = np.eye(3)
    np.testing.assert_allclose(metrics.consecutive_consistency(orthogonal), [0.0, 0.0])


# -- Avg. Dist. and the Table 1 layout ------------------------------------------------------------


def test_avg_dist_known_answers():
    assert metrics.avg_dist([0.3, 0.3, 0.3]) == 0.0
    assert metrics.avg_dist([0.30, 0.28, 0.26, 0.20]) == pytest.approx((0.02 + 0.04 + 0.10) / 3)
    assert metrics.avg_dist([0.20, 0.26, 0.28, 0.30]) == pytest.approx((0.06 + 0.08 + 0.10) / 3)  # reversed
    assert metrics.avg_dist([0.30, 0.28, 0.26, 0.20], include_first=True) == pytest.approx(0.16 / 4)
    assert metrics.avg_dist([0.1, 0.3, -0.1]) == pytest.approx(0.2)  # absolute, not signed
    with pytest.raises(ValueError):
        metrics.avg_dist([0.3])


@pytest.mark.parametrize("method", list(PAPER_TABLE_1))
def test_the_papers_printed_avg_dist_divides_by_f(method):
    """The printed Avg. Dist. is sum_{f>1} |s1 - sf| / F on the table's column (all four, to 4 decimals)."""
    column = PAPER_TABLE_1[method]
    assert round(metrics.avg_dist(column, include_first=True), 4) == PAPER_AVG_DIST[method]
    assert metrics.avg_dist(column) > PAPER_AVG_DIST[method] + 0.0005  # the (F - 1) reading does not match
    rows = dict((label, value) for label, value, _ in metrics.table_rows([column]))
    assert rows["Avg. Dist. (/F)"] == pytest.approx(metrics.avg_dist(column, include_first=True))
    if method != "T2V-Z":  # the paper prints 0.2930 for T2V-Z, whose column averages to 0.2936
        assert rows["Avg."] == pytest.approx(PAPER_AVG[method], abs=6e-5)


def test_table_rows_average_per_frame_index_over_videos():
    rows = metrics.table_rows([[0.3, 0.2, 0.1], [0.5, 0.4], []])
    assert [(label, round(value, 10), n) for label, value, n in rows] == [
        ("1", 0.4, 2), ("2", 0.3, 2), ("3", 0.1, 1),
        ("Avg.", round((0.4 + 0.3 + 0.1) / 3, 10), 2),
        ("Avg. Dist.", round((0.1 + 0.3) / 2, 10), 2),
        ("Avg. Dist. (/F)", round((0.1 + 0.3) / 3, 10), 2),
    ]
    assert metrics.table_rows([]) == []


def test_markdown_table_matches_rows_by_label():
    table = metrics.markdown_table({"A": metrics.table_rows([[0.3, 0.2]]), "B": metrics.table_rows([[0.1, 0.2, 0.3]])})
    lines = table.splitlines()
    assert lines[0] == "| Frame # | A | B |"
    assert lines[2:5] == ["| 1 | 0.3000 | 0.1000 |", "| 2 | 0.2000 | 0.2000 |", "| 3 |  | 0.3000 |"]
    assert lines[-1].startswith("| Avg. Dist. (/F) | 0.0500 | ")
