"""The paper's claims, measured in the shape world (README "Shape world").

Two tables, from the trained shape-world model and the exact detectors (``direct2v/shape_world/world.py``):

1. **Images**: single images from held-out captions (a colour, shape and grid cell never drawn
   together in training), one per caption and seed: how often the detectors find the asked colour,
   the asked colour in the asked cell, with the asked shape, and exactly one object.
2. **Videos**: three plans per seed (an object moving left to right, one moving top to bottom, a
   second object appearing halfway), each rendered five ways with the same seed:

   * ``independent``: plain SD per frame (each frame prompt alone, the same initial noise);
   * ``t2v-z``: Text2Video-Zero with the user prompt for every frame (scored against the frame prompts);
   * ``t2v-z-frames``: Text2Video-Zero's attention (frame 1 as every frame's reference) on the frame prompts;
   * ``rvm``: rotational value mapping on the frame prompts;
   * ``rvm-dsf``: RVM with dual-softmax filtering (the product's default).

   Per variant, mean +- standard deviation over the videos of: per-frame adherence (asked colour
   in the asked cell), colour found, identity consistency of the tracked object, object-count
   errors, flicker (``direct2v/evaluation/shapes.py`` says exactly how each is computed).

    python benchmarks/shape_world.py                      # 20 seeds, the run defaults' schedule
    python benchmarks/shape_world.py --seeds 5 --steps 20 # a quick look
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from direct2v.core.config import Settings
from direct2v.evaluation import shapes
from direct2v.render.call import RenderCall
from direct2v.render.encode import to_uint8
from direct2v.render.pipeline import DirecT2VPipeline

VARIANTS = {
    "independent": "plain SD per frame",
    "t2v-z": "Text2Video-Zero, one prompt",
    "t2v-z-frames": "Text2Video-Zero, frame prompts",
    "rvm": "RVM",
    "rvm-dsf": "RVM + DSF (default)",
}
VIDEO_KEYS = shapes.VIDEO_MEASURES


def render_call(settings, steps: int | None) -> RenderCall:
    """The run defaults' render (``RenderCall.from_settings``), at ``steps`` steps if given."""
    render = settings.render
    if steps is not None:
        render = render.model_copy(update={"num_inference_steps": steps})
    return RenderCall.from_settings(render)


def render_variant(
    pipe: DirecT2VPipeline, variant: str, scenario: shapes.Scenario, seed: int, call: RenderCall
) -> np.ndarray:
    """One scenario rendered as ``variant`` with ``seed``: uint8 frames (F, H, W, 3)."""
    if variant == "independent":
        frames = []
        one = call.replace(rvm_period=math.inf, dsf=False)
        for prompt in scenario.frames:
            frames.append(pipe([prompt], one, generator=torch.Generator().manual_seed(seed))[0])
        return to_uint8(np.stack(frames))
    prompts = list(scenario.frames)
    if variant == "t2v-z":
        prompts = [scenario.prompt] * len(prompts)
    if variant in ("t2v-z", "t2v-z-frames"):
        call = call.replace(rvm_period=math.inf, dsf=False)
    else:
        call = call.replace(dsf=variant == "rvm-dsf")
    return to_uint8(pipe(prompts, call, generator=torch.Generator().manual_seed(seed)))


def image_table(pipe, call: RenderCall, count: int, seeds: int) -> tuple[str, dict]:
    captions = shapes.image_captions(count)
    rows = []
    single = call.replace(rvm_period=math.inf, dsf=False)
    for seed in range(seeds):
        for text in captions:
            image = to_uint8(pipe([text], single, generator=torch.Generator().manual_seed(seed)))[0]
            rows.append(shapes.image_scores(image, text))
    summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    lines = ["| images | colour | colour+cell | colour+shape | one object |", "|---|---|---|---|---|",
             (f"| {len(rows)} (held-out captions x seeds) | {summary['colour']:.1%} | {summary['position']:.1%} | "
             f"{summary['shape']:.1%} | {summary['count_ok']:.1%} |")]
    return "\n".join(lines), summary


def video_table(pipe, call: RenderCall, seeds: int, variants: list[str], echo=print) -> tuple[str, dict]:
    scores: dict[str, list[dict]] = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for seed in range(seeds):
        for scenario in shapes.video_scenarios(seed):
            for name in variants:
                started = time.perf_counter()
                frames = render_variant(pipe, name, scenario, seed, call)
                seconds[name] += time.perf_counter() - started
                scores[name].append(shapes.video_scores(frames, scenario.frames))
        echo(f"seed {seed + 1}/{seeds} done")
    summary = {name: shapes.summarise(values) for name, values in scores.items()}
    header = "| variant | " + " | ".join(VIDEO_KEYS) + " | s/video |"
    lines = [header, "|---" * (len(VIDEO_KEYS) + 2) + "|"]
    for name in variants:
        cells = [f"{summary[name][key][0]:.3f} ± {summary[name][key][1]:.3f}" for key in VIDEO_KEYS]
        lines.append(f"| {name} ({VARIANTS[name]}) | " + " | ".join(cells) + f" | {seconds[name] / len(scores[name]):.2f} |")
    return "\n".join(lines), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the run default render.model_dir")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="default: render.num_inference_steps of the run defaults")
    parser.add_argument("--images", type=int, default=len(shapes.world.held_out_triples()),
                        help="held-out captions for the image table (default: one per held-out triple)")
    parser.add_argument("--image-seeds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-videos", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    settings = Settings()
    model_dir = args.model_dir or settings.render.model_dir
    pipe = DirecT2VPipeline.from_local_dir(model_dir)
    pipe.set_progress_bar_config(disable=True)
    call = render_call(settings, args.steps)
    print(f"model {model_dir}; {call}")
    if not args.skip_images:
        started = time.perf_counter()
        table, _ = image_table(pipe, call, args.images, args.image_seeds)
        print(f"\n{table}\n({time.perf_counter() - started:.0f} s)")
    if not args.skip_videos:
        started = time.perf_counter()
        variants = [v for v in args.variants.split(",") if v]
        table, _ = video_table(pipe, call, args.seeds, variants)
        print(f"\n{args.seeds} seeds x 3 plans x 8 frames; mean ± std over videos\n{table}\n"
              f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
