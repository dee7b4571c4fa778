"""The paper's claims, measured in the shape world (README "Shape world").

Two tables, from the trained shape-world model and the exact detectors (``direct2v/shape_world/world.py``):

1. **Images**: single images from held-out captions (a colour, shape and grid cell never drawn
   together in training), one per caption and seed: how often the detectors find the asked colour,
   the asked colour in the asked cell, with the asked shape, and exactly one object; the same for
   captions of combinations training shows (drawing a shape apart from composing a new combination),
   and the autoencoder alone on drawn held-out scenes (the ceiling no denoiser can pass).
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

3. **Claims** (``--claims``): the scenarios of ``direct2v/evaluation/claims.py``, aimed at each of
   the paper's claims (content that develops, an object that must be kept, two objects whose roles
   swap), every variant above plus ``rvm-all`` (RVM on every attention layer, no DSF) on the same
   seeds: one table per scenario kind (mean and 95% bootstrap interval of each measure) and the
   claims table (each claim's paired difference, its 95% interval and the verdict).

    python benchmarks/shape_world.py                      # 20 seeds, the run defaults' schedule
    python benchmarks/shape_world.py --seeds 5 --steps 20 # a quick look
    python benchmarks/shape_world.py --claims --seeds 30 --steps 20 --out claims.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from direct2v.core.config import Settings
from direct2v.evaluation import claims, shapes
from direct2v.render.call import RenderCall
from direct2v.render.encode import to_uint8
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.shape_world import world
from direct2v.shape_world.training import images_tensor

VARIANTS = {
    "independent": "plain SD per frame",
    "t2v-z": "Text2Video-Zero, one prompt",
    "t2v-z-frames": "Text2Video-Zero, frame prompts",
    "rvm": "RVM",
    "rvm-dsf": "RVM + DSF (default)",
    "rvm-all": "RVM on every attention layer (ablation)",
}
VIDEO_KEYS = shapes.VIDEO_MEASURES


def render_call(settings, steps: int | None) -> RenderCall:
    """The run defaults' render (``RenderCall.from_settings``), at ``steps`` steps if given."""
    render = settings.render
    if steps is not None:
        render = render.model_copy(update={"num_inference_steps": steps})
    return RenderCall.from_settings(render)


def independent_frames(pipe: DirecT2VPipeline, prompts: list[str], seed: int, call: RenderCall) -> np.ndarray:
    """Plain Stable Diffusion, each frame from its own prompt and the same initial noise, all frames in
    one batch: diffusers' ``StableDiffusionPipeline`` on the same components and PNDM sampler (what
    rendering each frame alone through our pipeline computes, up to float rounding: tests/test_claims.py)."""
    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=pipe.make_scheduler(call.scheduler), safety_checker=None,
                                    feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size
    noise = torch.randn((1, pipe.unet.config.in_channels, size, size), generator=torch.Generator().manual_seed(seed))
    return plain(prompts, num_inference_steps=call.num_inference_steps, guidance_scale=call.guidance_scale,
                 negative_prompt=[call.negative_prompt] * len(prompts), latents=noise.expand(len(prompts), -1, -1, -1),
                 output_type="np").images


def render_variant(
    pipe: DirecT2VPipeline, variant: str, scenario: shapes.Scenario, seed: int, call: RenderCall
) -> np.ndarray:
    """One scenario rendered as ``variant`` with ``seed``: uint8 frames (F, H, W, 3)."""
    if variant == "independent":
        return to_uint8(independent_frames(pipe, scenario.frames, seed, call))
    prompts = list(scenario.frames)
    if variant == "t2v-z":
        prompts = [scenario.prompt] * len(prompts)
    if variant in ("t2v-z", "t2v-z-frames"):
        call = call.replace(rvm_period=math.inf, dsf=False)
    elif variant == "rvm-all":
        call = call.replace(rvm_blocks="all", dsf=False)
    else:
        call = call.replace(dsf=variant == "rvm-dsf")
    return to_uint8(pipe(prompts, call, generator=torch.Generator().manual_seed(seed)))


def image_table(pipe, call: RenderCall, count: int, seeds: int) -> tuple[str, dict]:
    single = call.replace(rvm_period=math.inf, dsf=False)

    def scored(captions: list[str]) -> dict[str, float]:
        rows = []
        for seed in range(seeds):
            for text in captions:
                image = to_uint8(pipe([text], single, generator=torch.Generator().manual_seed(seed)))[0]
                rows.append(shapes.image_scores(image, text))
        return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}

    summary = scored(shapes.image_captions(count))
    seen = scored(shapes.image_captions(count, held_out=False))
    ceiling = autoencoder_scores(pipe.vae, count)
    lines = ["| images | colour | colour+cell | colour+shape | one object |", "|---|---|---|---|---|"]
    for label, scores in ((f"{count * seeds} (held-out captions x seeds)", summary),
                          (f"{count * seeds} (captions of combinations training shows x seeds)", seen),
                          (f"the autoencoder alone ({count} held-out scenes drawn, encoded, decoded)", ceiling)):
        lines.append(f"| {label} | {scores['colour']:.1%} | {scores['position']:.1%} | {scores['shape']:.1%} | "
                     f"{scores['count_ok']:.1%} |")
    return "\n".join(lines), summary | {"seen": seen, "autoencoder": ceiling}


def autoencoder_scores(vae, count: int, seed: int = 0) -> dict[str, float]:
    """The ceiling the model's autoencoder puts on the image table: the held-out triples' scenes drawn
    by the world (large and small in turn, a random background), encoded and decoded with no
    diffusion, scored against their captions as the model's images are. A shape the decoder cannot
    draw back is one no denoiser can get right."""
    rng = np.random.default_rng([seed, 271])
    triples = world.triples(held_out=True)
    backgrounds = list(world.BACKGROUNDS)
    scenes = []
    for i in range(count):
        colour, shape, (column, row) = triples[i % len(triples)]
        obj = world.ShapeObject(shape, colour, ("large", "small")[i % 2], column, row)
        scenes.append(world.Scene((obj,), backgrounds[rng.integers(len(backgrounds))]))
    pixels = images_tensor(scenes).float() / 127.5 - 1  # as the trainer feeds the autoencoder
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
    images = to_uint8(((decoded.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy())
    rows = [shapes.image_scores(image, world.caption(scene)) for image, scene in zip(images, scenes, strict=True)]
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def rendered(pipe, call: RenderCall, seeds: int, variants: list[str], scenarios_of, seconds: dict[str, float],
             after_seed=lambda seed: None):
    """Every scenario of every seed (``scenarios_of(seed)``) rendered by every variant, as (seed,
    scenario, variant, frames); each render's seconds added to ``seconds[variant]``; ``after_seed(seed)``
    once a seed's videos are all yielded."""
    for seed in range(seeds):
        for scenario in scenarios_of(seed):
            for name in variants:
                started = time.perf_counter()
                frames = render_variant(pipe, name, scenario, seed, call)
                seconds[name] += time.perf_counter() - started
                yield seed, scenario, name, frames
        after_seed(seed)


def video_table(pipe, call: RenderCall, seeds: int, variants: list[str], echo=print) -> tuple[str, dict]:
    scores: dict[str, list[dict]] = {name: [] for name in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for _, scenario, name, frames in rendered(pipe, call, seeds, variants, shapes.video_scenarios, seconds,
                                              lambda seed: echo(f"seed {seed + 1}/{seeds} done")):
        scores[name].append(shapes.video_scores(frames, scenario.frames))
    summary = {name: shapes.summarise(values) for name, values in scores.items()}
    header = "| variant | " + " | ".join(VIDEO_KEYS) + " | s/video |"
    lines = [header, "|---" * (len(VIDEO_KEYS) + 2) + "|"]
    for name in variants:
        cells = [f"{summary[name][key][0]:.3f} ± {summary[name][key][1]:.3f}" for key in VIDEO_KEYS]
        per_video = seconds[name] / len(scores[name])
        lines.append(f"| {name} ({VARIANTS[name]}) | " + " | ".join(cells) + f" | {per_video:.2f} |")
    return "\n".join(lines), summary


def cell(mean: float, low: float, high: float) -> str:
    return "-" if math.isnan(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def claims_tables(pipe, call: RenderCall, seeds: int, variants: list[str], echo=print,
                  partial: Path | None = None) -> tuple[str, dict]:
    """Every claim scenario of every seed rendered by every variant; the per-kind tables and the claims
    table. ``partial``: the scores so far are written there (JSON) after every seed, so a run cut
    short still leaves what it measured."""
    results: dict[str, dict[str, list[dict]]] = {kind: {name: [] for name in variants} for kind in claims.KINDS}
    seconds = dict.fromkeys(variants, 0.0)

    def seed_done(seed: int) -> None:
        echo(f"seed {seed + 1}/{seeds} done")
        if partial is not None:
            partial.write_text(json.dumps({"results": results, "seeds_done": seed + 1,
                                           "steps": call.num_inference_steps}) + "\n")

    for seed, scenario, name, frames in rendered(pipe, call, seeds, variants, claims.scenarios, seconds, seed_done):
        scores = claims.scores(frames, scenario)
        results[scenario.kind][name].append({"scenario": scenario.name, "seed": seed, **scores})
    videos = sum(len(by_variant[variants[0]]) for by_variant in results.values())
    table, judged = claims_report(results, variants)
    table += "\nseconds per video: " + ", ".join(f"{name} {seconds[name] / max(videos, 1):.2f}" for name in variants)
    return table, {"results": results, "claims": judged, "seconds": seconds, "videos": videos}


def claims_report(results: dict[str, dict[str, list[dict]]], variants: list[str]) -> tuple[str, list[dict]]:
    """The per-kind tables and the claims table of ``results[kind][variant]`` (every video's scores),
    and the judged claims."""
    lines = []
    for kind in claims.KINDS:
        measures = [m for m in claims.MEASURES
                    if not all(math.isnan(v[m]) for rows in results[kind].values() for v in rows)]
        lines += [f"**{kind}** ({len(results[kind][variants[0]])} videos per variant: "
                  f"{', '.join(dict.fromkeys(v['scenario'] for v in results[kind][variants[0]]))})", "",
                  "| variant | " + " | ".join(measures) + " |", "|---" * (len(measures) + 1) + "|"]
        for name in variants:
            cells = [cell(*claims.interval([v[m] for v in results[kind][name]])) for m in measures]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    judged = [claims.judge(claim, results) for claim in claims.CLAIMS
              if claim.treated in variants and claim.baseline in variants]
    lines += ["| claim | scenarios | measure | paired difference | 95% interval | pairs | verdict |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {j['claim']} | {j['kind']} | {j['measure']}: {j['test']} | {j['difference']:+.3f} | "
              f"[{j['low']:+.3f}, {j['high']:+.3f}] | {j['pairs']} | {j['verdict']} |" for j in judged]
    return "\n".join(lines), judged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: the run default render.model_dir")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None,
                        help="default: render.num_inference_steps of the run defaults")
    parser.add_argument("--images", type=int, default=len(world.triples(held_out=True)),
                        help="held-out captions for the image table (default: one per held-out triple)")
    parser.add_argument("--image-seeds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-videos", action="store_true")
    parser.add_argument("--claims", action="store_true", help="only the claims tables (README \"Shape world\")")
    parser.add_argument("--out", type=Path, help="--claims: write every video's scores and the verdicts here (JSON)")
    parser.add_argument("--tabulate", type=Path, metavar="JSON",
                        help="print the claims tables of a JSON that --claims --out wrote (a run cut short "
                        "too); no model")
    args = parser.parse_args()
    unknown = sorted(set(filter(None, args.variants.split(","))) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.tabulate:
        try:
            saved = json.loads(args.tabulate.read_text())
        except (OSError, ValueError) as error:
            parser.error(f"cannot read {args.tabulate} as a --claims --out JSON: {error}")
        variants = [v for v in args.variants.split(",") if v and v in next(iter(saved["results"].values()))]
        table, _ = claims_report(saved["results"], variants)
        seeds = saved.get("seeds_done", saved.get("seeds"))
        steps = saved.get("steps", args.steps)
        print(f"{seeds} seeds, {steps or '?'} steps; mean [95% bootstrap interval]\n{table}")
        return
    torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "2")))
    settings = Settings()
    model_dir = args.model_dir or settings.render.model_dir
    pipe = DirecT2VPipeline.from_local_dir(model_dir)
    pipe.set_progress_bar_config(disable=True)
    call = render_call(settings, args.steps)
    print(f"model {model_dir}; {call}")
    if args.claims:
        started = time.perf_counter()
        variants = [v for v in args.variants.split(",") if v]
        table, report = claims_tables(pipe, call, args.seeds, variants, lambda line: print(line, flush=True), args.out)
        report |= {"steps": call.num_inference_steps, "seeds": args.seeds, "model_dir": str(model_dir),
                   "seconds_total": time.perf_counter() - started}
        print(f"\n{args.seeds} seeds, {call.num_inference_steps} steps; mean [95% bootstrap interval]\n{table}\n"
              f"({report['seconds_total']:.0f} s)")
        if args.out:
            args.out.write_text(json.dumps(report, indent=1) + "\n")
        return
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
