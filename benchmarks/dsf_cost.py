"""What dual-softmax filtering costs: diffusers' Text2Video-Zero, our m=inf, RVM and RVM+DSF, side by side.

Renders the same 8-frame video four ways, each variant in its own process (so that one variant's
allocations and thread pools cannot slow the next), on the same model, size, schedule and seed:

* ``t2vz``: diffusers' deprecated ``TextToVideoZeroPipeline`` (cross-frame attention on every
  attention layer, the key/value of frame 0 copied to every frame);
* ``m-inf``: ours with the reference pinned to frame 0 on every layer and DSF off (the same math);
* ``rvm``: ours, rotational value mapping with period m=4 on up_blocks.2/.3, DSF off;
* ``rvm-dsf-stock``: the defaults with our one-pass CPU kernel off (``DIRECT2V_CPU_KERNELS=0``):
  the same math in three fused PyTorch kernel calls, what the kernel replaced;
* ``rvm-dsf``: ours with the defaults (RVM + dual-softmax filtering, phi = 0.05; on CPU the one-pass
  kernel of :mod:`direct2v.render.cpu_kernels`);
* only when named in ``--variants``: ``t2vz-compiled``, ``rvm-compiled``, ``rvm-dsf-compiled``, the same
  with the UNet through ``torch.compile`` (inductor; the warm-up render compiles, its seconds are in
  the table). Compiled RVM+DSF is compared with compiled RVM, and diffusers' pipeline compiled too,
  so that what compiling buys is not credited to DSF.

Each child renders once untimed at 2 steps (warm-up: kernels, allocator, lazy imports), then
``--repeats`` times timed, and reports the median seconds and its peak memory (resident set size on
CPU, the allocator's peak on CUDA). The table gives seconds, the ratio to diffusers, the ratio to
plain RVM (compiled, for the compiled variants) and the warm-up's seconds; the product's goal is
rvm-dsf / rvm <= 1.25 and rvm-dsf faster than t2vz. The warm-up render also builds the CPU kernel
where it is not yet built (untimed).

``--layer`` instead times the steps of ONE dual-softmax layer call in isolation (random
query/key/value of the given shape; default: the tiny model's up_blocks.3 at 256 px), each next to
what it replaced: the fused value mapping against plain RVM's, the fused confidence against the
blockwise reference, the own attention of the masked-out queries (stock SDPA padded, our CPU kernel
unpadded) against every query's, the selection against a full sort.

    python benchmarks/dsf_cost.py                    # tiny SD-shaped model at 256 px, CPU: ~1 min
    python benchmarks/dsf_cost.py --rounds 5         # round-robin, median over rounds: ~6 min
    python benchmarks/dsf_cost.py --variants t2vz t2vz-compiled rvm-compiled rvm-dsf-compiled   # ~4 min
    python benchmarks/dsf_cost.py --layer            # one layer call, step by step
    python benchmarks/dsf_cost.py --model-dir DIR --size 512 --steps 100 --t0 90 --t1 95   # CUDA
    python benchmarks/dsf_cost.py --architecture sd15 --size 512 --steps 100 --t0 90 --t1 95   # CUDA, no weights
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from direct2v.render import cpu_kernels

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "t2vz": "diffusers TextToVideoZeroPipeline",
    "m-inf": "ours, m=inf, all blocks, no DSF (same math as T2V-Z)",
    "rvm": "ours, RVM m=4 on up_blocks.2/.3",
    "rvm-dsf-stock": "ours, RVM + DSF on stock kernels (three passes)",
    "rvm-dsf": "ours, RVM + DSF (the default: one-pass CPU kernel)",
    # opt-in (--variants): the UNet through torch.compile (inductor), each compiled by its untimed warm-up
    "t2vz-compiled": "diffusers TextToVideoZeroPipeline, UNet compiled",
    "rvm-compiled": "ours, RVM m=4 on up_blocks.2/.3, compiled",
    "rvm-dsf-compiled": "ours, RVM + DSF, compiled (on CPU: our kernels as custom operators)",
}
COMPILED = "-compiled"
PROMPT = "a red fox runs across a snowy field"


def device_and_dtype() -> tuple[str, torch.dtype]:
    return ("cuda", torch.float16) if torch.cuda.is_available() else ("cpu", torch.float32)


def render_once(variant: str, pipe, args: argparse.Namespace, steps: int, t0: int, t1: int) -> None:
    variant = variant.removesuffix(COMPILED)  # compiled or not, the same render
    common = {"num_inference_steps": steps, "t0": t0, "t1": t1, "guidance_scale": args.guidance,
              "height": args.size, "width": args.size, "output_type": "latent",
              "generator": torch.Generator().manual_seed(0)}
    if variant == "t2vz":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe(PROMPT, video_length=args.frames, **common)
        return
    options = {
        "m-inf": {"rvm_period": math.inf, "rvm_blocks": "all", "dsf": False},
        "rvm": {"rvm_period": 4, "rvm_blocks": "up", "dsf": False},
        "rvm-dsf": {"rvm_period": 4, "rvm_blocks": "up", "dsf": True},
        "rvm-dsf-stock": {"rvm_period": 4, "rvm_blocks": "up", "dsf": True},
    }[variant]
    pipe([PROMPT] * args.frames, **options, **common)


def child(args: argparse.Namespace) -> None:
    """One variant in this process: load, warm up, time ``--repeats`` renders, print one JSON line."""
    device, dtype = device_and_dtype()
    base, compiled = args.variant.removesuffix(COMPILED), args.variant.endswith(COMPILED)
    if base == "t2vz":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_zero import (
                TextToVideoZeroPipeline,
            )

            pipe = TextToVideoZeroPipeline.from_pretrained(
                args.model_dir, safety_checker=None, local_files_only=True, torch_dtype=dtype
            ).to(device)
        pipe.set_progress_bar_config(disable=True)
        if compiled:
            pipe.unet = torch.compile(pipe.unet)
    else:
        from direct2v.render.pipeline import DirecT2VPipeline

        pipe = DirecT2VPipeline.from_local_dir(args.model_dir, torch_dtype=dtype, device=device)
        if compiled:
            pipe.compile_unet()
    started = time.perf_counter()
    render_once(args.variant, pipe, args, steps=2, t0=0, t1=1)
    warm_up = time.perf_counter() - started  # compiled variants: the compilation
    if getattr(pipe, "compile_failure", None):
        raise SystemExit(f"{args.variant}: torch.compile failed, the render ran eagerly: {pipe.compile_failure}")
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        render_once(args.variant, pipe, args, args.steps, args.t0, args.t1)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"seconds": statistics.median(seconds), "peak_bytes": peak, "warm_up_seconds": warm_up}))


def time_ms(function, repeats: int | None = None) -> float:
    repeats = repeats or (20 if torch.cuda.is_available() else 5)  # GPU calls take milliseconds
    function()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def padded_width(mask: torch.Tensor) -> float:
    """The share of the queries :func:`direct2v.render.dsf.own_attention_where` computes: every slice padded to
    the largest count of masked-out queries."""
    return float((~mask).sum(dim=-1).max()) / mask.shape[-1]


def three_digits(ms: float) -> str:
    """``ms`` to three significant digits, without an exponent (a GPU call can take 0.05 ms, the blockwise
    reference seconds): 0.0512, 26.7, 1234."""
    decimals = max(0, 2 - math.floor(math.log10(ms))) if ms > 0 else 1
    return f"{ms:.{decimals}f}"


def float32_confidences(dsf, function):
    """``function`` with both fused confidence calls on float32 copies of half-precision inputs, as
    before 2026-12-06 (on CUDA that took memory-efficient attention in float32 instead of flash)."""
    column_lse, confidence_from_lse = dsf.column_lse, dsf.confidence_from_lse

    def call():
        dsf.column_lse = lambda query, key: column_lse(query.float(), key.float())
        dsf.confidence_from_lse = lambda query, key, *lse: confidence_from_lse(query.float(), key.float(), *lse)
        try:
            return function()
        finally:
            dsf.column_lse, dsf.confidence_from_lse = column_lse, confidence_from_lse
    return call


def layer_steps(shape: list[int], dtype: torch.dtype | None = None) -> None:
    """Time each step of one dual-softmax layer call against the step it replaced."""
    from direct2v.render import attention, dsf, reference

    groups, frames, heads, tokens, _ = shape
    device, default_dtype = device_and_dtype()
    dtype = dtype or default_dtype
    generator = torch.Generator(device).manual_seed(0)
    query, key, value = (torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3))
    ref_key, ref_value = key[:, 1], value[:, 1]
    state = reference.FrameReference(index=1, cfg_groups=groups)
    plain, filtered = attention.RotationalValueMappingProcessor(state), attention.DualSoftmaxFilterProcessor(state)
    if device == "cpu":
        cpu_kernels.load()  # built before anything is timed
    mapped, confidence = filtered.mapping_and_confidence(query, ref_key, ref_value)
    mask = dsf.confidence_mask(confidence, filtered.quantile)
    frame_query = query.flatten(0, 1)
    frame_ref_key = ref_key[:, None].expand(groups, frames, *ref_key.shape[1:]).flatten(0, 1)
    row_lse = dsf.attention_with_lse(attention.fold_frames(query), ref_key, ref_value)[1]
    row_lse = row_lse.view(groups, heads, frames, tokens).transpose(1, 2).flatten(0, 1)
    col_lse = dsf.column_lse(frame_query, frame_ref_key)
    flat = confidence.flatten()

    def stock(function):  # the same call with the one-pass CPU kernel off
        def call():
            os.environ[cpu_kernels.SWITCH] = "0"
            try:
                return function()
            finally:
                os.environ.pop(cpu_kernels.SWITCH)
        return call

    def full_own():
        return torch.nn.functional.scaled_dot_product_attention(
            query.flatten(0, 1), key.flatten(0, 1), value.flatten(0, 1))

    rows = [
        ("value mapping (plain RVM's SDPA)", lambda: plain.value_mapping(query, ref_key, ref_value)),
        ("value mapping + row log-sum-exp (one fused call)",
         lambda: dsf.attention_with_lse(attention.fold_frames(query), ref_key, ref_value)),
        ("column log-sum-exp (one fused call)", lambda: dsf.column_lse(frame_query, frame_ref_key)),
        ("confidence sum (one fused call)", lambda: dsf.confidence_from_lse(frame_query, frame_ref_key, row_lse, col_lse)),
    ]
    if dtype != torch.float32:
        query32, key32 = frame_query.float(), frame_ref_key.float()
        rows += [
            ("column log-sum-exp, float32 copies (before)", lambda: dsf.column_lse(query32, key32)),
            ("confidence sum, float32 copies (before)",
             lambda: dsf.confidence_from_lse(query32, key32, row_lse, col_lse)),
            ("the whole RVM + DSF self-attention, confidences on float32 copies (before)",
             float32_confidences(dsf, lambda: filtered.self_attention(query, key, value))),
        ]
    if device == "cuda":
        rows.append(("column log-sum-exp, memory-efficient kernel with an 8-channel value (an alternative: "
                     "no product of the query's width)", lambda: lse_with_small_value(frame_ref_key, frame_query)))
    one_pass = cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is not None  # CPU, float32
    if one_pass:
        rows.append(("one-pass CPU kernel: value mapping + confidences (replaces the three calls above)",
                     lambda: cpu_kernels.dual_softmax_attention(query, ref_key, ref_value)))
    rows += [
        ("confidence, blockwise reference (all frames batched)",
         lambda: dsf.dual_softmax_confidence(query, ref_key[:, None])),
        ("quantile as shipped (dsf.quantile: topk on CPU, a sort elsewhere)", lambda: dsf.quantile(flat, filtered.quantile)),
        ("quantile: selection (topk of the shorter end)", lambda: dsf.quantile(flat, filtered.quantile, selection=True)),
        ("quantile: full sort", lambda: flat.sort()),
        (f"own attention, masked-out queries only ({(~mask).float().mean():.1%}; padded per slice to the most, "
         f"{padded_width(mask):.1%}), stock SDPA", lambda: dsf.own_attention_where(mask, mapped, query, key, value)),
    ]
    if one_pass:
        rows.append(("own attention, masked-out queries only, unpadded: our CPU kernel",
                     lambda: cpu_kernels.masked_own_attention(mask, mapped, query, key, value)))
    rows += [
        ("own attention, every query", full_own),
        ("the whole RVM self-attention", lambda: plain.self_attention(query, key, value)),
        ("the whole RVM + DSF self-attention, stock kernels", stock(lambda: filtered.self_attention(query, key, value))),
    ]
    if one_pass:
        rows.append(("the whole RVM + DSF self-attention, one-pass kernel",
                     lambda: filtered.self_attention(query, key, value)))
    print(f"one layer call, (groups, frames, heads, tokens, head_dim) = {tuple(shape)}, {device} "
          f"{str(dtype).removeprefix('torch.')}")
    print("| step | ms |")
    print("|---|---|")
    for name, function in rows:
        try:
            print(f"| {name} | {three_digits(time_ms(function))} |", flush=True)
        except RuntimeError as error:  # a kernel this device refuses: the other rows still count
            print(f"| {name} | failed: {str(error).splitlines()[0]} |", flush=True)


def lse_with_small_value(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The row log-sum-exp of ``Q K^T / sqrt(d)`` from CUDA's memory-efficient kernel with an
    8-channel zero value: what a log-sum-exp alone costs there without the product with a value as
    wide as the query (flash attention needs the value's width to equal the query's)."""
    value = query.new_zeros(*key.shape[:-1], 8)
    lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, None, True, scale=query.shape[-1] ** -0.5)[1]
    return lse[..., : query.shape[-2]]


def build_model(architecture: str, path: Path) -> Path:
    """A random-weight SD-1.x directory at ``path``: the tiny test model, or SD 1.5's sizes (built on
    the GPU where there is one, as ``benchmarks/gpu_render.py`` builds them, and saved in the
    benchmark's dtype). Random weights cost what trained ones cost."""
    if architecture == "tiny":
        from direct2v.bundled.tiny_models import build_tiny_sd

        return build_tiny_sd(path)
    from gpu_render import build  # beside this file

    from direct2v.bundled.tiny_models import sd_pipeline

    device, dtype = device_and_dtype()
    components = build(architecture, torch.device(device), dtype, path.parent)
    pipeline = sd_pipeline(components["unet"], components["vae"], components["text_encoder"], components["tokenizer"])
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


def run_variant(variant: str, args: argparse.Namespace, model_dir: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--variant", variant, "--model-dir", str(model_dir),
               "--size", str(args.size), "--frames", str(args.frames), "--steps", str(args.steps),
               "--t0", str(args.t0), "--t1", str(args.t1), "--guidance", str(args.guidance),
               "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if variant == "rvm-dsf-stock":
        env[cpu_kernels.SWITCH] = "0"  # the same math on PyTorch's fused kernels: what the CPU kernel replaced
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="default: build a random-weight model of --architecture in a temp dir")
    parser.add_argument("--architecture", choices=["tiny", "sd15"], default="tiny",
                        help="without --model-dir: the tiny test model, or SD 1.5's sizes (for a GPU)")
    parser.add_argument("--size", type=int, default=256, help="pixels (square)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--t0", type=int, default=8)
    parser.add_argument("--t1", type=int, default=9)
    parser.add_argument("--guidance", type=float, default=12.0)
    parser.add_argument("--repeats", type=int, default=1, help="timed renders per variant process (median)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every variant this many times, round-robin, and report the median over rounds: "
                             "a shared machine's drift then lands on every variant alike")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        help="default: all eager ones (on CUDA without rvm-dsf-stock, the same as rvm-dsf there); "
                             "the compiled ones only when named (each compiles first: minutes on a CPU)")
    parser.add_argument("--layer", action="store_true", help="time the steps of one layer call instead")
    parser.add_argument("--shape", type=int, nargs=5, default=[2, 8, 4, 1024, 8],
                        metavar=("GROUPS", "FRAMES", "HEADS", "TOKENS", "HEAD_DIM"), help="for --layer")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                        help="for --layer (default: float16 on CUDA, float32 on CPU)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.layer:
        layer_steps(args.shape, getattr(torch, args.dtype) if args.dtype else None)
        return

    if args.model_dir is not None and not (args.model_dir / "model_index.json").is_file():
        parser.error(f"--model-dir {args.model_dir}: not a diffusers model directory (no model_index.json)")
    device, dtype = device_and_dtype()
    if args.variants is None:  # the switch of rvm-dsf-stock only turns off our CPU kernel
        args.variants = [v for v in VARIANTS
                         if not v.endswith(COMPILED) and not (device == "cuda" and v == "rvm-dsf-stock")]
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or build_model(args.architecture, Path(scratch) / f"{args.architecture}-sd")
        print(f"model {model_dir}, {device} {str(dtype).removeprefix('torch.')}, {args.size} px, "
              f"{args.frames} frames, {args.steps} steps (t0={args.t0}, t1={args.t1}), CFG {args.guidance}, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, median of {args.repeats} "
              f"x {args.rounds} round(s)")
        rounds = [{variant: run_variant(variant, args, model_dir) for variant in args.variants}
                  for _ in range(args.rounds)]
        results = {variant: {"seconds": statistics.median(r[variant]["seconds"] for r in rounds),
                             "peak_bytes": max(r[variant]["peak_bytes"] for r in rounds),
                             "warm_up_seconds": statistics.median(r[variant]["warm_up_seconds"] for r in rounds)}
                   for variant in args.variants}

    def seconds_of(variant: str) -> float | None:
        return results.get(variant, {}).get("seconds")

    print("| variant | seconds | x diffusers T2V-Z | x RVM (same mode) | peak memory | warm-up (s) |")
    print("|---|---|---|---|---|---|")
    baseline = seconds_of("t2vz")
    for variant, row in results.items():
        # eager against eager RVM, compiled against compiled RVM: what DSF itself costs in each mode
        rvm = seconds_of("rvm-compiled" if variant.endswith(COMPILED) else "rvm")
        versus_t2vz = f"{row['seconds'] / baseline:.2f}" if baseline else "-"
        versus_rvm = f"{row['seconds'] / rvm:.2f}" if rvm else "-"
        print(f"| {VARIANTS[variant]} | {row['seconds']:.2f} | {versus_t2vz} | {versus_rvm} | "
              f"{row['peak_bytes'] / 2**30:.2f} GiB | {row['warm_up_seconds']:.1f} |")


if __name__ == "__main__":
    main()
