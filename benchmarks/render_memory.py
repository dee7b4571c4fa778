"""How much memory cached-attention chunking holds, as the video grows.

Renders F frames for several F with a fixed batch size B and reports, per F: the sections, the
largest UNet batch, the peak bytes held by the anchor key/value cache (measured: the sum of the
cached tensors' nbytes, read at every UNet call), the wall time and, on CUDA, the peak allocated
memory. Then it estimates the cache for Stable Diffusion 1.5 at 512 px with the paper's settings
from the same formula the measurement confirms (bytes per cached (step, anchor) pair x pairs).

    python benchmarks/render_memory.py                      # the tiny model, built in a temp dir
    python benchmarks/render_memory.py --model-dir DIR --frames 8 16 32 --steps 100 --t0 90 --t1 95
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from direct2v.render.attention import RotationalValueMappingProcessor
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.rvm import cached_anchor_steps, chunk_plan, reference_schedule


def measure(pipe: DirecT2VPipeline, frames: int, args: argparse.Namespace) -> dict:
    """Render ``frames`` frames and record the peak anchor-cache bytes and UNet batch."""
    peak_bytes, max_batch, states = 0, 0, []

    def spy(module, call_args, kwargs):
        nonlocal peak_bytes, max_batch
        if not states:  # one state object serves every RVM layer for the whole call
            processors = module.attn_processors.values()
            states.extend(p.state for p in processors if isinstance(p, RotationalValueMappingProcessor))
        cache = states[0].anchors or states[0].record_to
        peak_bytes = max(peak_bytes, cache.nbytes if cache is not None else 0)
        max_batch = max(max_batch, call_args[0].shape[0])

    prompts = [f"a red fox in a snowy field, frame {i + 1}" for i in range(frames)]
    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    try:
        pipe(prompts, num_inference_steps=args.steps, t0=args.t0, t1=args.t1, batch_size=args.batch_size,
             rvm_period=args.period, dsf=not args.no_dsf, generator=torch.Generator().manual_seed(0),
             output_type="latent")
    finally:
        handle.remove()
    return {
        "frames": frames,
        "sections": len(chunk_plan(frames, args.batch_size).sections),
        "max_unet_frames": max_batch // 2,
        "cache_bytes": peak_bytes,
        "seconds": time.perf_counter() - started,
        "cuda_peak": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }


def cached_pairs(frames: int, batch_size: int, joint_steps: int, period: float) -> int:
    plan = chunk_plan(frames, batch_size)
    sizes = [plan.num_anchors + len(section) for section in plan.sections]
    schedules = [reference_schedule(joint_steps, size, "rotational", period) for size in sizes]
    return len(cached_anchor_steps(schedules, plan.num_anchors))


def sd15_bytes_per_pair(dtype_bytes: int = 2, cfg_groups: int = 2) -> int:
    """K and V of one anchor at one step in SD 1.5's up_blocks.2/.3 self-attention at 512 px:
    3 layers at 32x32 tokens x 640 channels, 3 layers at 64x64 tokens x 320 channels."""
    elements = 3 * 32 * 32 * 640 + 3 * 64 * 64 * 320
    return 2 * cfg_groups * elements * dtype_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None, help="default: build the tiny model in a temp dir")
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16, 24, 48])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--t0", type=int, default=6)
    parser.add_argument("--t1", type=int, default=8)
    parser.add_argument("--period", type=float, default=4)
    parser.add_argument("--no-dsf", action="store_true")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir
        if model_dir is None:
            from direct2v.bundled.tiny_models import build_tiny_sd

            model_dir = build_tiny_sd(Path(scratch) / "tiny-sd")
        pipe = DirecT2VPipeline.from_local_dir(model_dir, torch_dtype=dtype, device=device)
        pipe.set_progress_bar_config(disable=True)
        print(f"model {model_dir}, {device} {dtype}, B={args.batch_size}, m={args.period}, "
              f"{args.t1 + 1} joint steps, DSF {'off' if args.no_dsf else 'on'}")
        header = ("F", "sections", "UNet frames", "cache bytes", "pairs", "s", "CUDA peak")
        print(" ".join(f"{name:>{width}}" for name, width in zip(header, (5, 8, 11, 12, 5, 7, 10))))
        for frames in args.frames:
            row = measure(pipe, frames, args)
            pairs = cached_pairs(frames, args.batch_size, args.t1 + 1, args.period)
            peak = f"{row['cuda_peak'] / 2**20:.0f} MiB" if row["cuda_peak"] is not None else "-"
            print(f"{frames:>5} {row['sections']:>8} {row['max_unet_frames']:>11} {row['cache_bytes']:>12} "
                  f"{pairs:>5} {row['seconds']:>7.2f} {peak:>10}")

    pairs = cached_pairs(10 * args.batch_size, args.batch_size, 96, 4)
    total = pairs * sd15_bytes_per_pair()
    print(f"SD 1.5, 512 px, fp16, CFG, up_blocks.2/.3, T'=96, m=4, B={args.batch_size}: {pairs} cached "
          f"(step, anchor) pairs x {sd15_bytes_per_pair() / 2**20:.1f} MiB = {total / 2**30:.2f} GiB, for any F > B")


if __name__ == "__main__":
    main()
