"""The claims lab's scenarios and measures (direct2v/evaluation/claims.py), pinned on frames drawn
by the world itself: the ideal video of each scenario scores as meeting it, and a video with the
claim's failure drawn into it scores as failing, by the amount the construction implies."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from direct2v.evaluation import claims, shapes
from direct2v.shape_world import world

FRAMES = 8


def draw(asks) -> np.ndarray:
    return np.stack([world.draw(world.Scene(ask.objects, ask.background)) for ask in asks])


def by_name(seed: int = 0) -> dict[str, claims.ClaimScenario]:
    return {scenario.name: scenario for scenario in claims.scenarios(seed, FRAMES)}


def test_each_kind_has_its_scenarios_and_the_same_seed_gives_the_same_plans():
    scenarios = claims.scenarios(0, FRAMES)
    assert [s.kind for s in scenarios] == ["develops"] * 4 + ["keeps"] * 2 + ["wrong-source"] * 2
    assert all(len(s.asks) == len(s.frames) == FRAMES for s in scenarios)
    assert claims.scenarios(0, FRAMES) == scenarios and claims.scenarios(1, FRAMES) != scenarios


@pytest.mark.parametrize("seed", range(6))
def test_what_develops_is_absent_from_frame_1_and_asked_from_halfway(seed):
    s = by_name(seed)
    half = FRAMES // 2
    appears = [len(ask.objects) for ask in s["appears"].asks]
    assert appears == [1] * half + [2] * half
    colours = [ask.objects[0].colour for ask in s["recolours"].asks]
    assert len(set(colours[:half])) == len(set(colours[half:])) == 1 and colours[0] != colours[-1]
    assert [ask.background for ask in s["night falls"].asks] == ["white"] * half + ["black"] * half
    assert [ask.objects[0].size for ask in s["grows"].asks] == ["small"] * half + ["large"] * half
    assert s["grows"].frames[0].startswith("a small ") and s["grows"].frames[-1].startswith("a large ")


@pytest.mark.parametrize("seed", range(6))
def test_kept_objects_never_change_and_swapped_ones_trade_cells(seed):
    s = by_name(seed)
    for name in ("static and mover", "static and newcomer"):
        kept = {ask.objects[s[name].kept] for ask in s[name].asks}
        assert len(kept) == 1
    mover = [ask.objects[1].cell for ask in s["static and mover"].asks]
    assert mover[0] == (0, 2) and mover[-1] == (2, 2) and len(set(mover)) == 3
    first, last = s["swap"].asks[0].objects, s["swap"].asks[-1].objects
    assert (first[0].cell, first[1].cell) == (last[1].cell, last[0].cell)
    recolour = s["one of two recolours"].asks
    assert recolour[0].objects[0].shape == recolour[0].objects[1].shape
    assert recolour[0].objects[0].colour != recolour[-1].objects[0].colour
    assert recolour[0].objects[1] == recolour[-1].objects[1]


def test_the_frame_prompts_are_the_worlds_words_for_each_ask():
    for scenario in claims.scenarios(3, FRAMES):
        for ask, text in zip(scenario.asks, scenario.frames):
            read = shapes.parse_caption(text)
            assert [(w.colour, w.shape, (w.column, w.row)) for w in read] == [
                (o.colour, o.shape, o.cell) for o in ask.objects], text
            assert text.endswith(f"on a {ask.background} background")


@pytest.mark.parametrize("shape", world.SHAPES)
@pytest.mark.parametrize("size", ["small", "large"])
def test_the_size_of_a_drawn_object_is_read_back(shape, size):
    obj = world.ShapeObject(shape=shape, colour="red", size=size, column=1, row=1)
    found = world.detect(world.draw(world.Scene((obj,), "white")))
    assert claims.size_of(found[0]) == size


@pytest.mark.parametrize("seed", range(3))
def test_the_ideal_video_of_every_scenario_meets_it(seed):
    for scenario in claims.scenarios(seed, FRAMES):
        result = claims.scores(draw(scenario.asks), scenario)
        assert result["adherence_late"] == 1.0, scenario.name
        if scenario.kept is not None:
            assert result["identity"] == 1.0
        else:
            assert math.isnan(result["identity"])
        if scenario.kind == "wrong-source":
            assert result["leaked"] == 0.0
        if scenario.kind == "develops":
            assert result["avg_dist"] > 0.0


def test_a_video_stuck_on_frame_1_fails_what_develops_by_the_share_it_misses():
    """Text2Video-Zero's failure as the paper describes it: frames 2..F stay frame 1."""
    s = by_name(0)
    half = FRAMES // 2
    late = FRAMES - 1
    for name, missed in (("recolours", 0.5), ("night falls", 0.5), ("grows", 0.5), ("appears", 1 / 3)):
        stuck = draw([s[name].asks[0]] * FRAMES)
        result = claims.scores(stuck, s[name])
        # frames 2..half ask what frame 1 shows; frames half+1..F lose `missed` of their asks
        assert result["adherence_late"] == pytest.approx(((half - 1) + half * (1 - missed)) / late), name
        assert result["avg_dist"] == 0.0


def test_a_kept_object_that_moves_loses_identity_from_the_frame_it_moves():
    s = by_name(0)["static and mover"]
    asks = list(s.asks)
    moved = [claims.FrameAsk((world.ShapeObject(**{**ask.objects[0].__dict__, "column": 1}),) + ask.objects[1:],
                             ask.background) for ask in asks[5:]]
    result = claims.scores(draw(asks[:5] + moved), s)
    assert result["identity"] == pytest.approx(4 / 7)  # frames 2-5 keep it, 6-8 do not


def test_values_from_the_wrong_place_show_as_leaked_pixels():
    s = by_name(0)
    swap = s["swap"]
    not_swapped = claims.scores(draw([swap.asks[0]] * FRAMES), swap)  # each object still where the other is asked
    assert not_swapped["leaked"] > 0.05
    recolour = s["one of two recolours"]
    wrong = [claims.FrameAsk((world.ShapeObject(**{**ask.objects[0].__dict__, "colour": ask.objects[1].colour}),
                              ask.objects[1]), ask.background) for ask in recolour.asks]
    painted = claims.scores(draw(wrong), recolour)  # the left object in the right one's colour, every frame
    assert painted["leaked"] > 0.05 and claims.scores(draw(recolour.asks), recolour)["leaked"] == 0.0


def test_bootstrap_intervals_and_verdicts():
    assert claims.interval([0.5] * 10) == (0.5, 0.5, 0.5)
    mean, low, high = claims.interval(np.linspace(0, 1, 40))
    assert mean == pytest.approx(0.5) and low < mean < high and high - low < 0.25
    assert all(math.isnan(v) for v in claims.interval([float("nan")]))
    assert claims.paired_interval([1, 2, 3], [0, 1, 2]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="align"):
        claims.paired_interval([1, 2], [1])
    assert claims.verdict(0.1, 0.3, +1) == "holds here" and claims.verdict(-0.3, -0.1, -1) == "holds here"
    assert claims.verdict(0.1, 0.3, -1) == "refuted here" and claims.verdict(-0.1, 0.3, +1) == "not shown"


def test_a_claim_is_judged_on_paired_differences():
    rng = np.random.default_rng(0)
    base = rng.random(30)

    def results(shift, noise=0.0):
        treated = base + shift + noise * rng.standard_normal(30)
        return {"wrong-source": {"rvm": [{"leaked": v} for v in base],
                                 "rvm-dsf": [{"leaked": v} for v in treated]}}

    claim = next(c for c in claims.CLAIMS if c.measure == "leaked")
    assert claims.judge(claim, results(-0.05))["verdict"] == "holds here"  # a small shift, far below the spread
    assert claims.judge(claim, results(+0.05))["verdict"] == "refuted here"
    judged = claims.judge(claim, results(0.0, noise=0.3))
    assert judged["verdict"] == "not shown" and judged["pairs"] == 30 and judged["low"] < 0 < judged["high"]


def test_the_benchmarks_independent_frames_are_each_frame_rendered_alone(tiny_sd_dir):
    """benchmarks/shape_world.py renders the ``independent`` variant in one batch through diffusers'
    plain SD pipeline; that is each frame rendered alone through ours (same noise, same PNDM)."""
    import importlib.util

    import torch

    from direct2v.render.call import RenderCall
    from direct2v.render.renderer import load_pipeline

    benchmark = shape_world_benchmark()
    pipe = load_pipeline(tiny_sd_dir)
    call = RenderCall(num_inference_steps=8, guidance_scale=7.5)
    prompts = by_name(0)["recolours"].frames[3:6]
    batched = benchmark.independent_frames(pipe, prompts, 4, call)
    alone = np.stack([pipe([prompt], call, rvm_period=math.inf, dsf=False,
                           generator=torch.Generator().manual_seed(4))[0] for prompt in prompts])
    assert batched.shape == alone.shape == (3, 64, 64, 3)
    assert np.abs(batched - alone).max() < 1e-4
    assert not np.allclose(batched[0], batched[-1])  # each frame its own prompt


def test_a_run_cut_short_is_tabulated_from_its_partial_json(tmp_path):
    """``--claims --out`` writes the scores after every seed; ``--tabulate`` prints the tables and
    verdicts of what a run cut short measured, without loading a model."""
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(1)
    variants = ("independent", "t2v-z", "t2v-z-frames", "rvm", "rvm-dsf")

    def video(shift: float) -> dict:
        return {"scenario": "any", "seed": 0, **{m: float(rng.random() * 0.1 + shift) for m in claims.MEASURES}}

    results = {kind: {name: [video(0.5 if name == "rvm-dsf" else 0.0) for _ in range(12)] for name in variants}
               for kind in claims.KINDS}
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"results": results, "seeds_done": 3, "steps": 100}))
    root = __import__("conftest").REPO
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "shape_world.py"), "--tabulate", str(partial)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("3 seeds, 100 steps")
    verdicts = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[-1].rstrip(" |")
                for line in done.stdout.splitlines() if line.endswith(("here |", "not shown |"))}
    # DSF raised leaked pixels by 0.5 on every video: refuted (it should lower them); the rest differ by noise
    assert verdicts["DSF stops values mapped from the wrong place"] == "refuted here"
    assert verdicts["RVM lets content develop where T2V-Z stays faithful to frame 1"] == "not shown"
    assert done.stdout.count("**develops** (12 videos per variant") == 1


def shape_world_benchmark():
    """benchmarks/shape_world.py as a module (it is a script, not part of the package)."""
    import importlib.util

    root = __import__("conftest").REPO
    spec = importlib.util.spec_from_file_location("shape_world_benchmark", root / "benchmarks" / "shape_world.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    return benchmark


class _Autoencoder:
    """An autoencoder stand-in: ``encode`` keeps the pixels, ``decode`` applies ``loss`` to them."""

    def __init__(self, loss):
        self.loss = loss

    def encode(self, pixels):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: pixels))

    def decode(self, latents):
        return SimpleNamespace(sample=self.loss(latents))


def test_the_autoencoder_ceiling_scores_the_drawn_scenes_against_their_captions():
    """The image table's ceiling row: a lossless autoencoder gives back every scene as the world drew
    it, so every asked colour, cell and shape is found; one that decodes 8 x 8 pixel blocks (what an
    8x autoencoder's latent holds, with nothing learned) keeps colours and cells and loses shapes."""
    import torch.nn.functional as F

    benchmark = shape_world_benchmark()
    lossless = benchmark.autoencoder_scores(_Autoencoder(lambda x: x), count=24)
    assert lossless == {"colour": 1.0, "position": 1.0, "shape": 1.0, "count_ok": 1.0}
    blocks = benchmark.autoencoder_scores(
        _Autoencoder(lambda x: F.interpolate(F.avg_pool2d(x, 8), scale_factor=8, mode="nearest")), count=24)
    assert blocks["position"] > 0.9 and blocks["shape"] < 0.6  # measured: 0.958 and 0.458


def test_the_benchmark_answers_a_missing_json_or_an_unknown_variant_in_one_line(tmp_path):
    import subprocess
    import sys

    root = __import__("conftest").REPO
    script = str(root / "benchmarks" / "shape_world.py")
    for args, said in ((["--tabulate", str(tmp_path / "none.json")], "cannot read"),
                       (["--variants", "rvm,rvm-fast", "--tabulate", str(tmp_path / "none.json")],
                        "unknown variants rvm-fast")):
        done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=120, cwd=root)
        assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
