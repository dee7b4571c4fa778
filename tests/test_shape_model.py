"""The committed shape-world model renders what it is asked, as measured by the exact detectors.

Thresholds are the numbers measured on exactly these seeds and settings when the weights were
committed (README "Shape world"), less a margin of about one image or video for float differences
between machines; they are not chosen to pass, and a retrained model must meet them again.
"""

import math

import numpy as np
import pytest
import torch

from direct2v.bundled.models import SHAPE_WORLD_WEIGHTS, install_shape_world
from direct2v.core.config import RenderSettings
from direct2v.evaluation import shapes
from direct2v.render.call import RenderCall
from direct2v.render.encode import to_uint8
from direct2v.render.pipeline import DirecT2VPipeline

# measured at commit time on these seeds, defaults at STEPS steps (see the module docstring)
IMAGE_COLOUR_MIN = 0.95  # measured 1.000 (21 of 21)
IMAGE_CELL_MIN = 0.95  # measured 1.000 (21 of 21)
IMAGE_SHAPE_MIN = 0.90  # measured 0.952 (20 of 21; before the decoder tuning 0.905; the first 8x8 model about 26%)
VIDEO_ADHERENCE_MIN = 0.83  # measured 1.000 (6 videos; one failing wholly is 0.833)
VIDEO_COLOUR_MIN = 0.83  # measured 1.000


@pytest.fixture(scope="module")
def shape_pipe():
    return DirecT2VPipeline.from_local_dir(SHAPE_WORLD_WEIGHTS)


# the defaults as a run renders: at 20 steps this model finds 71% of the colours (docs/shape-world.md)
STEPS = RenderSettings().num_inference_steps


def _defaults():
    return RenderCall.from_settings(RenderSettings(num_inference_steps=STEPS))


def test_models_build_copies_the_committed_weights_and_replaces_a_copy_of_other_weights(tmp_path):
    import shutil

    from direct2v.bundled.models import MADE_FROM, stale

    out = install_shape_world(tmp_path / "shape-world")
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and p.name != MADE_FROM) == sorted(
        p.relative_to(SHAPE_WORLD_WEIGHTS) for p in SHAPE_WORLD_WEIGHTS.rglob("*") if p.is_file())
    assert (out / "TRAINING.json").is_file() and not list(out.rglob("*.bin"))
    assert not stale(out, SHAPE_WORLD_WEIGHTS)
    newer = tmp_path / "newer"  # a checkout that brought retrained weights
    shutil.copytree(SHAPE_WORLD_WEIGHTS, newer)
    (newer / "TRAINING.json").write_text((newer / "TRAINING.json").read_text() + " ")
    assert stale(out, newer) and not stale(install_shape_world(out, newer), newer)
    (out / MADE_FROM).unlink()  # made before the stamp existed: made again, to be sure
    assert stale(out, newer)


def test_held_out_captions_render_with_the_asked_colour_cell_and_shape(shape_pipe):
    captions = shapes.image_captions(21)
    call = _defaults().replace(rvm_period=math.inf, dsf=False)  # one frame: plain SD
    scores = []
    for seed in (0,):
        for text in captions:
            image = shape_pipe([text], call, generator=torch.Generator().manual_seed(seed))[0]
            scores.append(shapes.image_scores(to_uint8(image[None])[0], text))
    colour = np.mean([s["colour"] for s in scores])
    cell = np.mean([s["position"] for s in scores])
    shape = np.mean([s["shape"] for s in scores])
    print(f"images: colour {colour:.3f} cell {cell:.3f} shape {shape:.3f}")
    assert colour >= IMAGE_COLOUR_MIN and cell >= IMAGE_CELL_MIN and shape >= IMAGE_SHAPE_MIN, (colour, cell, shape)


def test_default_videos_follow_their_frame_prompts(shape_pipe):
    call = _defaults()  # RVM + DSF, as a run renders
    scores = []
    for seed in (0, 1):
        for scenario in shapes.video_scenarios(seed):
            frames = shape_pipe(scenario.frames, call, generator=torch.Generator().manual_seed(seed))
            scores.append(shapes.video_scores(frames, scenario.frames))
    adherence = np.mean([s["adherence"] for s in scores])
    colour = np.mean([s["colour"] for s in scores])
    print(f"videos: adherence {adherence:.3f} colour {colour:.3f}")
    assert adherence >= VIDEO_ADHERENCE_MIN and colour >= VIDEO_COLOUR_MIN, (adherence, colour)


def test_compare_with_the_shape_metric_scores_each_variant_from_its_mp4s(tmp_path):
    from direct2v.core.config import Settings
    from direct2v.director.plan import FramePlan
    from direct2v.evaluation.compare import compare
    from direct2v.evaluation.evaluate import run_rows
    from direct2v.render.encode import read_video

    scenario = shapes.video_scenarios(seed=3)[0]
    plan = FramePlan.model_validate({"prompt_id": scenario.prompt_id, "prompt": scenario.prompt, "fps": 2, "seed": 3,
                                     "frames": scenario.frames})
    settings = Settings(render={"model_dir": SHAPE_WORLD_WEIGHTS, "num_inference_steps": 6, "t0": 3, "t1": 4,
                                "device": "cpu"})
    table, results = compare([plan], tmp_path, settings, ["t2v-z", "rvm-dsf"], echo=lambda line: None, metric="shapes")
    for name in ("t2v-z", "rvm-dsf"):
        (row,) = run_rows(tmp_path / name)
        again = shapes.video_scores(read_video(tmp_path / name / row.video_path), scenario.frames)
        assert {key: mean for key, (mean, _) in results[name].items()} == pytest.approx(again)
    assert "| adherence |" in table and (tmp_path / "comparison.md").read_text().strip() == table.strip()
