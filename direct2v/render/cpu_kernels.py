"""Our own CPU kernel for dual-softmax filtering: built from C++ on first use, cached, optional.

PyTorch's fused attention kernels reduce over keys only, so exact Eq. 3 costs them three passes over
the scores (the value mapping, the column log-sum-exp, the confidence sum: see
:func:`direct2v.render.dsf.confidence_from_lse`). ``kernels/dual_softmax.cpp`` computes the value mapping and
every confidence in one pass, each exponential taken once (the derivation is at the top of that
file), and, as a second operator, the own attention of the queries the mask sends back to their frame
(:func:`masked_own_attention`), gathered without padding. It is compiled with
``torch.utils.cpp_extension`` for the vector instructions PyTorch itself uses on this CPU (AVX-512 or
AVX2), once per source, PyTorch version and instruction set, into
``$DIRECT2V_KERNEL_CACHE`` (default ``~/.cache/direct2v/render/kernels``); ``scripts/setup.sh`` builds it, so
a render only loads it (well under a second).

Optional by design: where it cannot be built (no C++ compiler, another instruction set) or does not
apply (not CPU, not float32, while ``torch.compile`` traces, autograd), each operator's wrapper
returns None and the caller takes the stock-kernel path, which computes the same math; a build
failure is logged once. ``DIRECT2V_CPU_KERNELS=0`` turns both off (for comparisons). The DSF
processor calls the wrappers from inside custom operators of its own
(:func:`direct2v.render.attention.cpu_mapping_and_confidence`, :func:`direct2v.render.attention.cpu_own_attention_where`),
which a compiled graph runs as they are: compiled renders use the kernels too.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "kernels" / "dual_softmax.cpp"
#: Compiler flags per ``torch.backends.cpu.get_cpu_capability()``: the same vector width as PyTorch's
#: own kernels on this CPU, so ``at::vec::Vectorized`` means the same thing in ours.
ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
               "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"],
    "AVX2": ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"],
}
SWITCH = "DIRECT2V_CPU_KERNELS"
CACHE = "DIRECT2V_KERNEL_CACHE"
#: Largest head size the kernel takes (``kMaxHead`` in the C++); larger heads take the stock path.
MAX_HEAD = 256

#: Calls of the kernel and those it handed back because the scores' range could cost precision.
STATS: Counter[str] = Counter()


def enabled() -> bool:
    """False where ``DIRECT2V_CPU_KERNELS`` is 0/off/false/no."""
    return os.environ.get(SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def cache_dir() -> Path:
    if os.environ.get(CACHE):
        return Path(os.environ[CACHE])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "direct2v" / "kernels"


def library_name(flags: list[str]) -> str:
    """The kernel library's name for this source, PyTorch version and compiler flags."""
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + " ".join(flags).encode()).hexdigest()
    return f"direct2v_dsf_{key[:16]}"


@functools.cache
def load() -> str | None:
    """Build (first time) and load the kernel library; its operator namespace, or None (logged once)."""
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ISA_FLAGS.get(capability)
    if flags is None:
        logger.warning("no DSF CPU kernel for this CPU (%s); the stock-kernel path serves", capability)
        return None
    name = library_name(flags)
    build_dir = cache_dir() / name
    try:
        from torch.utils.cpp_extension import load as build_and_load

        build_dir.mkdir(parents=True, exist_ok=True)
        build_and_load(name=name, sources=[str(SOURCE)], build_directory=str(build_dir), is_python_module=False,
                       extra_cflags=["-O3", *flags, f"-DDIRECT2V_NAMESPACE={name}"], verbose=False)
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as error:
        # no compiler or ninja, a failed build, an unwritable cache or unloadable library: stock kernels serve
        reason = (str(error).strip().splitlines() or [type(error).__name__])[-1]  # a build log ends with its error
        logger.warning("the DSF CPU kernel could not be built in %s (%s); the stock-kernel path serves",
                       build_dir, reason)
        return None
    return name


def on_cpu_outside_autograd(*tensors: torch.Tensor) -> bool:
    """All on the CPU and none needing a gradient: what every operator here requires (none has a
    backward), the kernels' and the DSF processor's custom operators alike."""
    return all(x.device.type == "cpu" for x in tensors) and not (
        torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    )


def serving_library(tensors: tuple[torch.Tensor, ...], *head_sizes: int) -> str | None:
    """The kernel library's operator namespace where its operators take these inputs: eager, the
    kernels on, float32 CPU tensors outside autograd, head sizes up to :data:`MAX_HEAD`, the library
    built; else None."""
    if (
        torch.compiler.is_compiling()  # first: inside a graph nothing else is looked at
        or not enabled()
        or not on_cpu_outside_autograd(*tensors)
        or any(x.dtype != torch.float32 for x in tensors)
        or max(head_sizes) > MAX_HEAD
    ):
        return None
    return load()


def dual_softmax_attention(
    query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The value mapping and its dual-softmax confidences in one pass; None where the kernel does not serve.

    Same results as :meth:`direct2v.render.attention.RotationalValueMappingProcessor.value_mapping` and
    :func:`direct2v.render.dsf.frame_confidence` (to float32 rounding), for every frame against its
    group's reference.

    Args:
        query: ``(groups, frames, heads, tokens, d)``, any strides; ref_key: ``(groups, heads, ref_tokens, d)``;
            ref_value: ``(groups, heads, ref_tokens, dv)``; all float32 on the CPU.
    Returns:
        ``(mapped, confidence)``: ``(groups, frames, heads, tokens, dv)`` and float32
        ``(groups, frames, heads, tokens)``; None where the kernel is off, cannot be built, does not
        apply to these inputs, or reports that the scores' range could cost precision (then the
        caller's exact multi-pass path serves; counted in :data:`STATS`).
    """
    name = serving_library((query, ref_key, ref_value), query.shape[-1], ref_value.shape[-1])
    if name is None:
        return None
    mapped, confidence, in_range = getattr(torch.ops, name).dual_softmax_attention(
        query, ref_key, ref_value, query.shape[-1] ** -0.5
    )
    STATS["calls"] += 1
    if not in_range:
        STATS["out_of_range"] += 1
        return None
    return mapped, confidence


def masked_own_attention(
    mask: torch.Tensor, mapped: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor | None:
    """Eq. 4, ``where(mask, mapped, Attention(Q_f, K_f, V_f))``, the own attention computed for the
    masked-out queries only and without padding; None where the kernel does not serve.

    Same result as :func:`direct2v.render.dsf.own_attention_where` (to float32 rounding), which pads every
    (group, frame, head) slice to the largest slice's count of masked-out queries (about 2.3x the
    mean in a default render) and gathers, sorts and scatters in separate calls.

    Args:
        mask: bool ``(groups, frames, heads, tokens)``, True where the value mapping is kept.
        mapped: ``(groups, frames, heads, tokens, dv)``; query: ``(groups, frames, heads, tokens, d)``;
            key, value: the frames' own, ``(groups, frames, heads, tokens, d / dv)``; any strides, float32.
    Returns:
        A new ``(groups, frames, heads, tokens, dv)`` tensor, or None where the kernel is off, cannot be
        built or does not apply to these inputs.
    """
    name = serving_library((mapped, query, key, value), query.shape[-1], value.shape[-1])
    if name is None or mask.dtype != torch.bool or mask.device.type != "cpu":
        return None
    return getattr(torch.ops, name).masked_own_attention(mask, mapped, query, key, value, query.shape[-1] ** -0.5)


def main() -> None:
    """``python -m direct2v.render.cpu_kernels``: build the kernel now (set-up does), say whether it serves."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    name = load()
    status = f"ready ({cache_dir() / name})" if name else "unavailable: the stock-kernel path serves"
    print(f"DSF CPU kernel: {status}")


if __name__ == "__main__":
    main()
