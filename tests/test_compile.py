"""The compiled UNet: one graph per kind of call, zero recompiles after warm-up, eager's output.

Dynamo's guards decide recompilation, whatever the backend, so these tests compile with dynamo's
``eager`` backend: the captured graphs (processors, anchor cache writes, DSF's CPU operators as one
call each) run as traced, without inductor's code generation, which takes ~7 minutes for the tiny
UNet's graphs on 2 CPU cores (measured: 244 s + 175 s; its output then matched eager within 1.7e-6
relative). The same graphs run through inductor on a GPU in ``benchmarks/gpu_render.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo

from direct2v.core.config import RenderSettings
from direct2v.render import cpu_kernels
from direct2v.render.pipeline import DirecT2VPipeline
from direct2v.render.renderer import Renderer

# m = 1: the reference frame changes at every joint step (each would be a new Python int to guard on).
FAST = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5, "rvm_period": 1}
PROMPTS = ["a red fox runs", "the fox stops", "the fox looks up", "the fox jumps", "the fox lands"]
#: the kinds of render a warm-up covers (RVM+DSF, CFG): one batch; chunked (anchor pass + 2 sections)
KINDS = {
    "one batch": {},
    "chunked": {"batch_size": 2},
}


def render(pipe: DirecT2VPipeline, seed: int = 0, prompts: list[str] = PROMPTS, **kwargs) -> torch.Tensor:
    return pipe(prompts, generator=torch.Generator().manual_seed(seed), output_type="latent", **{**FAST, **kwargs})


def graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def compiled(tiny_sd_dir):
    """A pipeline of its own (the shared one stays eager), its eager renders, then compiled and warmed up."""
    pipe = DirecT2VPipeline.from_local_dir(tiny_sd_dir)
    eager = {kind: render(pipe, **kwargs) for kind, kwargs in KINDS.items()}
    torch._dynamo.reset()
    pipe.compile_unet(backend="eager")
    before = graphs_compiled()
    warm = {kind: render(pipe, **kwargs) for kind, kwargs in KINDS.items()}
    return pipe, eager, warm, graphs_compiled() - before


def test_warm_up_compiles_whole_graphs_without_falling_back(compiled):
    pipe, _, _, warm_up_graphs = compiled
    assert pipe.compile_failure is None and pipe.compiled_unet is not None
    # frame 1 alone, the joint batch, the anchor pass (first step allocates the cache), a section,
    # plain RVM: a handful of whole graphs (fullgraph: no graph break), not one per step
    assert 1 <= warm_up_graphs <= 10


def test_a_second_render_of_every_kind_compiles_nothing(compiled):
    pipe = compiled[0]
    before = graphs_compiled()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for kwargs in KINDS.values():
            render(pipe, seed=5, prompts=[f"{p}, again" for p in PROMPTS], **kwargs)  # new data, same graphs
    assert graphs_compiled() == before
    assert pipe.compile_failure is None


def test_compiled_dsf_runs_the_cpu_kernels_as_often_as_eager(compiled):
    # each DSF layer call is one opaque operator in the graph, so compiled renders keep the one-pass
    # kernel and the unpadded own attention instead of tracing the stock path
    pipe = compiled[0]
    before = cpu_kernels.STATS["calls"]
    render(pipe, seed=7)
    compiled_calls = cpu_kernels.STATS["calls"] - before
    compiled_unet, pipe.compiled_unet = pipe.compiled_unet, None
    try:
        render(pipe, seed=7)
    finally:
        pipe.compiled_unet = compiled_unet
    assert compiled_calls > 0 and compiled_calls == cpu_kernels.STATS["calls"] - before - compiled_calls


@pytest.mark.parametrize("kind", list(KINDS))
def test_compiled_render_equals_eager(compiled, kind):
    _, eager, warm, _ = compiled
    scale = eager[kind].abs().max()
    assert torch.allclose(warm[kind], eager[kind], atol=1e-5 * float(scale), rtol=0)


def test_a_failing_compiler_is_logged_once_and_the_render_runs_eagerly(tiny_sd_dir, caplog):
    pipe = DirecT2VPipeline.from_local_dir(tiny_sd_dir)
    expected = render(pipe, **KINDS["chunked"])

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no compiler here")

    torch._dynamo.reset()
    pipe.compile_unet(backend=broken_backend)
    with caplog.at_level(logging.WARNING, logger="direct2v.render.pipeline"):
        out = render(pipe, **KINDS["chunked"])
    warnings = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "BackendCompilerFailed" in warnings[0] and "no compiler here" in warnings[0]
    assert pipe.compiled_unet is None and "no compiler here" in pipe.compile_failure
    assert torch.equal(out, expected)  # eager from the failed call on: the same computation


@pytest.mark.parametrize("compile_setting, compiled_expected", [("auto", False), (True, True), (False, False)])
def test_render_compile_setting(tiny_sd_dir, compile_setting, compiled_expected):
    renderer = Renderer(RenderSettings(model_dir=tiny_sd_dir, device="cpu", compile=compile_setting))
    assert (renderer.pipeline.compiled_unet is not None) is compiled_expected  # 'auto' is off on a CPU
    # channels_last 'auto' is off on a CPU too: the UNet keeps its contiguous weights
    assert renderer.pipeline.unet.conv_in.weight.is_contiguous()
