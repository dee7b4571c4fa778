"""The renderer's GPU check: every speed and memory target of the GPU path, measured in ONE process.

Builds Stable-Diffusion-1.5-architecture components with random weights on the device (nothing is
downloaded; random weights cost what trained ones cost), then renders the same 8-frame prompt list
with, in order:

1. ``t2vz``: diffusers' ``TextToVideoZeroPipeline`` (the anchor every ratio is taken against);
2. ``rvm``: ours, rotational value mapping, eager;
3. ``rvm_dsf``: ours, RVM + dual-softmax filtering (the default), eager;
4. ``rvm_dsf_compiled``: the same through ``torch.compile`` (one warm-up render compiles, the timed
   render must compile nothing: ``recompiles``);
5. ``long``: 64 frames (``--long-frames``) with batch 8, cached-attention chunking, eager like (3).

Each row: seconds per video and per UNet step, peak GPU memory, NaN / all-black frames (fp16), the
ratio to ``t2vz``. Then the targets of the renderer's GPU issue, each computed from those numbers.
Prints a table and one JSON report (also written to ``--out``, after every variant, so a run cut
short still leaves what it measured).

Needs torch, transformers, diffusers and direct2v's renderer modules only (no prefect, vllm,
pydantic or pyarrow: the GPU image has none; the report lists the direct2v modules it loaded, and
``forbidden_modules``, any of those four that some package of this environment imported). On the device machine, after ``bash scripts/device-wheels.sh`` here (docs/gpu-check.md):

    python3 benchmarks/gpu_render.py --out "$OUT/gpu_render.json"

``--tiny`` runs the same code on a CPU with tiny components, 4 frames (8 chunked with batch 4),
6 steps and dynamo's ``eager`` compile backend (inductor needs minutes to compile on a CPU): the
test suite runs it.

``--sdxl`` measures the SDXL path instead, on SDXL-1.0-architecture random weights (two text
encoders, 2.6 B-parameter UNet), fp16, 1024 px, 8 frames, 50 PNDM steps: diffusers'
``TextToVideoZeroSDXLPipeline`` and ours (RVM + DSF, the defaults), eager, in the same process, with
seconds, peak memory and NaN/black frames each (``--tiny --sdxl``: the tiny SDXL on a CPU, in the suite).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the renderer modules, without installing

import numpy as np
import torch
import torch._dynamo
from diffusers import (
    AutoencoderKL,
    PNDMScheduler,
    TextToVideoZeroPipeline,
    TextToVideoZeroSDXLPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from direct2v.bundled.tiny_models import (
    SD15_SCHEDULER,
    SD_UNET_LAYOUT,
    SD_VAE_LAYOUT,
    SDXL_UNET,
    SDXL_VAE,
    TINY_UNET,
    TINY_VAE,
    build_clip_tokenizer,
    tiny_text_config,
)
from direct2v.core.schedule import resolve_schedule
from direct2v.render.pipeline import DirecT2VPipeline, frame_faults
from direct2v.render.pipeline_xl import DirecT2VXLPipeline

FORBIDDEN = ("prefect", "vllm", "pydantic", "pyarrow")

#: (unet, vae, text encoder) sizes of SD 1.5, and of the tiny test model (``direct2v.bundled.tiny_models``)
ARCHITECTURES = {
    "sd15": (
        {"sample_size": 64, "cross_attention_dim": 768, "block_out_channels": (320, 640, 1280, 1280),
         "layers_per_block": 2, "attention_head_dim": 8, "norm_num_groups": 32},
        {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 512},
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "projection_dim": 768, "hidden_act": "quick_gelu", "vocab_size": 49408},
    ),
    "tiny": (TINY_UNET, TINY_VAE, {}),
}

#: (unet, vae, text encoder, text encoder 2) of SDXL 1.0 base, and of the tiny SDXL (``tiny_models``)
SDXL_ARCHITECTURES = {
    "sdxl": (
        {**SDXL_UNET, "sample_size": 128, "block_out_channels": (320, 640, 1280), "layers_per_block": 2,
         "transformer_layers_per_block": (1, 2, 10), "attention_head_dim": (5, 10, 20), "cross_attention_dim": 2048,
         "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32},
        {**SDXL_VAE, "block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "norm_num_groups": 32,
         "sample_size": 1024},
        {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "hidden_act": "quick_gelu", "vocab_size": 49408},
        {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
         "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408},
    ),
    "tiny-sdxl": (SDXL_UNET, SDXL_VAE, {}, {"projection_dim": 32, "hidden_act": "gelu"}),
}

PROMPTS = [
    "a corgi runs on a beach", "the corgi runs toward the waves", "a second corgi appears on the left",
    "the two corgis run side by side", "the corgis splash in shallow water", "the corgis stop and look up",
    "the corgis shake off the water", "the corgis sit on the sand at sunset",
]

#: the renderer issue's targets: (name, report key, limit); each "<= limit"
TARGETS = [
    ("seconds per video (compiled RVM+DSF)", "s_per_video", 4.0),
    ("ratio to diffusers' Text2Video-Zero", "ratio_to_t2vz", 0.5),
    ("peak GPU memory, GiB", "peak_gib", 8.0),
    ("64 frames: peak memory / 8 frames", "long_peak_ratio", 1.15),
    ("64 frames: time per frame / 8 frames", "long_time_per_frame_ratio", 1.2),
    ("DSF over plain RVM (eager)", "dsf_over_rvm", 1.25),
]


def build(architecture: str, device: torch.device, dtype: torch.dtype, workdir: Path, seed: int = 0) -> dict:
    """Random-weight SD-1.x components on ``device`` (initialised there: no host copy of 1 B parameters)."""
    unet_config, vae_config, text_config = ARCHITECTURES[architecture]
    tokenizer = build_clip_tokenizer(workdir / "tokenizer")
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD_UNET_LAYOUT, **unet_config)
        vae = AutoencoderKL(**SD_VAE_LAYOUT, **vae_config)
        # the tiny text encoder's sizes, overridden by SD 1.5's (its vocabulary is larger than our tokenizer's)
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**tiny_text_config(tokenizer), **text_config}))
    return {
        "unet": unet.to(dtype).eval(), "vae": vae.to(dtype).eval(), "text_encoder": text_encoder.to(dtype).eval(),
        "tokenizer": tokenizer, "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER),
    }


def build_sdxl(architecture: str, device: torch.device, dtype: torch.dtype, workdir: Path, seed: int = 0) -> dict:
    """Random-weight SDXL components on ``device``; the scheduler is PNDM with SDXL's training schedule."""
    unet_config, vae_config, text_config, text_config_2 = SDXL_ARCHITECTURES[architecture]
    tokenizer = build_clip_tokenizer(workdir / "tokenizer")
    tokenizer_2 = build_clip_tokenizer(workdir / "tokenizer_2")
    tokenizer_2.pad_token = "!"
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**SD_VAE_LAYOUT, **vae_config)
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**tiny_text_config(tokenizer), **text_config}))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**{**tiny_text_config(tokenizer_2),
                                                                        **text_config_2}))
    return {
        "unet": unet.to(dtype).eval(), "vae": vae.to(dtype).eval(), "text_encoder": text_encoder.to(dtype).eval(),
        "text_encoder_2": text_encoder_2.to(dtype).eval(), "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
        "scheduler": PNDMScheduler.from_config(SD15_SCHEDULER),
    }


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, render: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float | None]:
    """``(frames, seconds, peak GiB)`` of one render; the peak is None off CUDA (not measured there)."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    frames = render()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return np.asarray(frames), seconds, peak


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` of two measured numbers; None when either was not measured."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def report_header(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, architecture: str,
                  size: int) -> dict:
    """What every report starts with: the machine, the versions and the render's settings."""
    window = resolve_schedule(args.steps)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "python": platform.python_version(),
        "diffusers": __import__("diffusers").__version__, "transformers": __import__("transformers").__version__,
        "architecture": architecture, "dtype": str(dtype).removeprefix("torch."), "size": size,
        "frames": args.frames, "steps": args.steps, "t0": window.t0, "t1": window.t1,
        "guidance_scale": args.guidance_scale, "variants": {},
    }


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.float16
    architecture = "tiny" if args.tiny else "sd15"
    size = args.size
    steps, frames, long_frames = args.steps, args.frames, args.long_frames
    window = resolve_schedule(steps)
    report = {**report_header(args, device, dtype, architecture, size), "compile_backend": args.backend, "targets": []}

    def save() -> None:
        # what this process imported: ours must import none of FORBIDDEN (tests/test_gpu_render.py reads
        # their sources); a third-party package of this environment may (the GPU image lacks them all)
        report["direct2v_modules"] = sorted(name for name in sys.modules if name.split(".")[0] == "direct2v")
        report["forbidden_modules"] = sorted(name for name in FORBIDDEN if name in sys.modules)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as workdir:
        components = build(architecture, device, dtype, Path(workdir))
    prompts = (PROMPTS * math.ceil(long_frames / len(PROMPTS)))[:long_frames]

    def record(name: str, result: tuple[np.ndarray, float, float | None], video_frames: int, unet_calls: int | None,
               **extra) -> None:
        images, seconds, peak = result
        not_finite, black = frame_faults(images)
        report["variants"][name] = {
            "frames": video_frames, "s_per_video": seconds, "s_per_frame": seconds / video_frames,
            "unet_calls": unet_calls, "s_per_step": ratio(seconds, unet_calls), "peak_gib": peak,
            "nan": not_finite, "black_frames": black, **extra,
        }
        print(f"{name}: {seconds:.2f} s, peak {peak if peak is None else round(peak, 2)} GiB", flush=True)
        save()

    # 1. diffusers' Text2Video-Zero: its cross-frame attention on every layer, one prompt
    t2vz = TextToVideoZeroPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    t2vz.set_progress_bar_config(disable=True)

    def t2vz_render(num_steps: int, t0: int, t1: int) -> np.ndarray:
        generator = torch.Generator(device=device).manual_seed(0)
        output = t2vz(PROMPTS[0], video_length=frames, height=size, width=size, num_inference_steps=num_steps,
                      guidance_scale=args.guidance_scale, motion_field_strength_x=0, motion_field_strength_y=0,
                      t0=t0, t1=t1, generator=generator, output_type="np")
        return output.images

    unet_calls = []  # UNet evaluations of the last render, for seconds per step
    handle = components["unet"].register_forward_pre_hook(lambda module, inputs: unet_calls.append(1))
    t2vz_render(4, 1, 2)  # warm-up: kernels, allocator, cuDNN's choices
    unet_calls.clear()
    record("t2vz", measure(device, lambda: t2vz_render(steps, window.t0, window.t1)), frames, len(unet_calls))
    components["unet"].set_attn_processor(AttnProcessor2_0())  # T2V-Z left its processors installed

    # 2-5. ours
    ours = DirecT2VPipeline(**components)

    def ours_render(count: int, num_steps: int = steps, **kwargs) -> np.ndarray:
        unet_calls.clear()
        return ours(prompts[:count], num_inference_steps=num_steps, guidance_scale=args.guidance_scale,
                    height=size, width=size, batch_size=args.batch_size,
                    generator=torch.Generator().manual_seed(0), **kwargs)

    for name, dsf in (("rvm", False), ("rvm_dsf", True)):
        ours_render(frames, num_steps=4, dsf=dsf)  # warm-up
        record(name, measure(device, lambda dsf=dsf: ours_render(frames, dsf=dsf)), frames, len(unet_calls))

    ours.compile_unet(backend=args.backend)
    started = time.perf_counter()
    ours_render(frames, num_steps=4)  # warm-up: compiles frame 1's batch and the joint batch
    synchronize(device)
    compile_s = time.perf_counter() - started
    before = graphs_compiled()
    with warnings.catch_warnings(record=True) as syncs:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            result = measure(device, lambda: ours_render(frames))
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    host_syncs = sum("synchroniz" in str(w.message) for w in syncs) if device.type == "cuda" else None
    record("rvm_dsf_compiled", result, frames, len(unet_calls), compile_s=compile_s,
           recompiles=graphs_compiled() - before, compile_failure=ours.compile_failure, host_syncs=host_syncs)
    ours.compiled_unet = None  # the long render runs eagerly, against the eager 8-frame one

    ours_render(min(long_frames, 3 * args.batch_size), num_steps=4)  # warm-up of the chunked path
    record("long", measure(device, lambda: ours_render(long_frames)), long_frames, len(unet_calls),
           batch_size=args.batch_size)
    handle.remove()

    variants = report["variants"]
    best = variants["rvm_dsf_compiled"] if not ours.compile_failure else variants["rvm_dsf"]
    for row in variants.values():
        row["ratio_to_t2vz"] = ratio(row["s_per_video"], variants["t2vz"]["s_per_video"])
    summary = {
        "s_per_video": best["s_per_video"], "ratio_to_t2vz": best["ratio_to_t2vz"], "peak_gib": best["peak_gib"],
        "long_peak_ratio": ratio(variants["long"]["peak_gib"], variants["rvm_dsf"]["peak_gib"]),
        "long_time_per_frame_ratio": ratio(variants["long"]["s_per_frame"], variants["rvm_dsf"]["s_per_frame"]),
        "dsf_over_rvm": ratio(variants["rvm_dsf"]["s_per_video"], variants["rvm"]["s_per_video"]),
    }
    report["summary"] = summary
    report["targets"] = [
        {"target": label, "value": summary[key], "limit": limit,
         "met": None if summary[key] is None else summary[key] <= limit}
        for label, key, limit in TARGETS
    ]
    save()
    return report


def run_sdxl(args: argparse.Namespace) -> dict:
    """The SDXL rows: diffusers' Text2Video-Zero SDXL, then ours with the defaults (RVM + DSF), eager."""
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.float16
    architecture = "tiny-sdxl" if args.tiny else "sdxl"
    size, steps, frames = args.size, args.steps, args.frames
    window = resolve_schedule(steps)
    report = report_header(args, device, dtype, architecture, size)
    with tempfile.TemporaryDirectory() as workdir:
        components = build_sdxl(architecture, device, dtype, Path(workdir))
    unet_calls = []
    handle = components["unet"].register_forward_pre_hook(lambda module, inputs: unet_calls.append(1))

    def record(name: str, result: tuple[np.ndarray, float, float | None]) -> None:
        images, seconds, peak = result
        not_finite, black = frame_faults(images)
        report["variants"][name] = {"frames": frames, "s_per_video": seconds, "unet_calls": len(unet_calls),
                                    "s_per_step": ratio(seconds, len(unet_calls)), "peak_gib": peak,
                                    "nan": not_finite, "black_frames": black}
        print(f"{name}: {seconds:.2f} s, peak {peak if peak is None else round(peak, 2)} GiB", flush=True)
        report["direct2v_modules"] = sorted(name for name in sys.modules if name.split(".")[0] == "direct2v")
        report["forbidden_modules"] = sorted(name for name in FORBIDDEN if name in sys.modules)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2) + "\n")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated pipeline; fp16 on CPU
        t2vz = TextToVideoZeroSDXLPipeline(**components, force_zeros_for_empty_prompt=True, add_watermarker=False)
    t2vz.set_progress_bar_config(disable=True)

    def t2vz_render(num_steps: int, t0: int, t1: int) -> np.ndarray:
        unet_calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return t2vz(PROMPTS[0], video_length=frames, height=size, width=size, num_inference_steps=num_steps,
                        guidance_scale=args.guidance_scale, motion_field_strength_x=0, motion_field_strength_y=0,
                        t0=t0, t1=t1, generator=torch.Generator(device=device).manual_seed(0), output_type="np").images

    t2vz_render(4, 1, 2)  # warm-up
    record("sdxl_t2vz", measure(device, lambda: t2vz_render(steps, window.t0, window.t1)))
    components["unet"].set_attn_processor(AttnProcessor2_0())  # T2V-Z left its processors installed

    ours = DirecT2VXLPipeline(**components)

    def ours_render(num_steps: int = steps) -> np.ndarray:
        unet_calls.clear()
        return ours(PROMPTS[:frames], num_inference_steps=num_steps, guidance_scale=args.guidance_scale, height=size,
                    width=size, batch_size=frames, generator=torch.Generator().manual_seed(0))

    ours_render(4)  # warm-up
    record("sdxl_rvm_dsf", measure(device, ours_render))
    handle.remove()
    rows = report["variants"]
    rows["sdxl_rvm_dsf"]["ratio_to_t2vz"] = ratio(rows["sdxl_rvm_dsf"]["s_per_video"], rows["sdxl_t2vz"]["s_per_video"])
    rows["sdxl_t2vz"]["ratio_to_t2vz"] = 1.0
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def table(report: dict) -> str:
    """The variants as a Markdown table, then the targets (where the report has them)."""
    def cell(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    compiled = any("recompiles" in row for row in report["variants"].values())
    lines = [f"{report['device']}, {report['architecture']} {report['dtype']} {report['size']} px, "
             f"{report['steps']} steps, CFG {report['guidance_scale']}, torch {report['torch']}",
             "| variant | frames | s/video | s/step | peak GiB | x T2V-Z | NaN | black |"
             + (" recompiles |" * compiled),
             "|---|---:|---:|---:|---:|---:|---|---|" + ("---:|" * compiled)]
    for name, row in report["variants"].items():
        lines.append(f"| {name} | {row['frames']} | {cell(row['s_per_video'])} | {cell(row['s_per_step'], 4)} | "
                     f"{cell(row['peak_gib'])} | {cell(row.get('ratio_to_t2vz'))} | {row['nan']} | "
                     f"{row['black_frames'] or '-'} |" + (f" {cell(row.get('recompiles'))} |" * compiled))
    if report.get("targets"):
        lines += ["", "| target | value | limit | met |", "|---|---:|---:|---|"]
        lines += [f"| {t['target']} | {cell(t['value'], 3)} | {t['limit']} | {cell(t['met'])} |"
                  for t in report["targets"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny components on the CPU (the test suite's run)")
    parser.add_argument("--sdxl", action="store_true", help="the SDXL rows (1024 px, 50 steps) instead")
    parser.add_argument("--steps", type=int, help="PNDM steps (default 100, 50 with --sdxl; 6 with --tiny)")
    parser.add_argument("--frames", type=int, help="frames of the video (default 8; 4 with --tiny)")
    parser.add_argument("--long-frames", type=int, help="frames of the chunked render (default 64; 8 with --tiny)")
    parser.add_argument("--batch-size", type=int, help="frames per UNet call (default 8; 4 with --tiny)")
    parser.add_argument("--size", type=int, help="pixels (default 512, 1024 with --sdxl; 64 with --tiny)")
    parser.add_argument("--guidance-scale", type=float, default=12.0)
    parser.add_argument("--backend", help="torch.compile backend (default inductor; eager with --tiny)")
    parser.add_argument("--out", help="write the JSON report here too")
    args = parser.parse_args(argv)
    args.steps = args.steps or (6 if args.tiny else 50 if args.sdxl else 100)
    args.frames = args.frames or (4 if args.tiny else 8)
    args.size = args.size or (64 if args.tiny else 1024 if args.sdxl else 512)
    args.long_frames = args.long_frames or (8 if args.tiny else 64)
    args.batch_size = args.batch_size or (4 if args.tiny else 8)
    args.backend = args.backend or ("eager" if args.tiny else "inductor")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --tiny for the CPU check")
    report = run_sdxl(args) if args.sdxl else run(args)
    print(table(report))
    print(json.dumps(report))
    return 0

if __name__ == "__main__":
    sys.exit(main())
