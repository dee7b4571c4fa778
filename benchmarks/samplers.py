"""Render seconds per video by sampler and step count: the paper's 100 PNDM steps against few-step sampling.

Renders the same 8-frame plan on the same model with each (sampler, steps) pair, RVM + DSF on (the
defaults), the schedule scaled to each step count (``direct2v/core/schedule.py``) and each sampler's
usual guidance (12 for PNDM and DPM-Solver++, 1 = no classifier-free guidance for LCM); VAE decode
included. One untimed warm-up render, then the median of ``--repeats``; the table gives the ratio
to 100 PNDM steps measured in the same run. On random weights this measures cost only: whether
8 LCM steps look as good needs an LCM-distilled model or LCM-LoRA (``--lora-dir``).

    python benchmarks/samplers.py                         # tiny SD-shaped model, CPU: ~1 min
    python benchmarks/samplers.py --model-dir DIR --lora-dir LCM_LORA_DIR --size 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from direct2v.core.config import RenderSettings
from direct2v.director.plan import FramePlan
from direct2v.render.renderer import Renderer

VARIANTS = [("pndm", 100), ("dpmsolver++", 25), ("lcm", 8)]


def seconds_per_video(settings: RenderSettings, plan: FramePlan, repeats: int) -> tuple[float, str]:
    renderer = Renderer(settings)
    renderer.pipeline(plan.frames, num_inference_steps=3, height=settings.height, width=settings.width,
                      output_type="latent")  # warm-up: kernels, allocator, lazy imports
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        renderer.render(plan)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    schedule = settings.schedule()
    return statistics.median(timings), f"t0={schedule.t0} t1={schedule.t1} m={schedule.period}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: build the tiny model in a temp dir")
    parser.add_argument("--lora-dir", type=Path, default=None, help="an LCM-LoRA for the lcm row")
    parser.add_argument("--size", type=int, default=None, help="pixels (square); default the model's own")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from direct2v.bundled.tiny_models import build_tiny_sd

            model_dir = build_tiny_sd(Path(scratch) / "tiny-sd")
        plan = FramePlan(prompt_id="fox", prompt="a red fox in the snow", fps=2, seed=0,
                         frames=[f"a red fox runs across a snowy field, step {i + 1}" for i in range(args.frames)])
        rows = []
        for scheduler, steps in VARIANTS:
            settings = RenderSettings(model_dir=model_dir, scheduler=scheduler, num_inference_steps=steps,
                                      height=args.size, width=args.size,
                                      lora_dir=args.lora_dir if scheduler == "lcm" else None)
            seconds, schedule = seconds_per_video(settings, plan, args.repeats)
            rows.append((scheduler, steps, settings.resolved_guidance_scale(), schedule, seconds))
            print(f"  {scheduler} {steps} steps: {seconds:.2f} s", flush=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"model {model_dir}, {device}, {args.frames} frames, RVM + DSF, median of {args.repeats}")
    print("| sampler | steps | guidance | schedule | s per video | x 100 PNDM |")
    print("|---|---|---|---|---|---|")
    baseline = rows[0][-1]
    for scheduler, steps, guidance, schedule, seconds in rows:
        print(f"| {scheduler} | {steps} | {guidance:g} | {schedule} | {seconds:.2f} | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
