"""The DSF CPU kernels (direct2v/render/kernels/dual_softmax.cpp: the one-pass value mapping and confidences, the
unpadded own attention) against the reference math, and their fallbacks."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch

from direct2v.render import attention, cpu_kernels
from direct2v.render.attention import DualSoftmaxFilterProcessor
from direct2v.render.dsf import confidence_mask, dual_softmax_confidence, own_attention_where
from direct2v.render.reference import FrameReference


def explicit(query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 2-3 in float64 with the full score matrix: the value mapping and the confidences."""
    scores = query.double() @ ref_key.double()[:, None].transpose(-1, -2) / math.sqrt(query.shape[-1])
    mapped = torch.softmax(scores, dim=-1) @ ref_value.double()[:, None]
    confidence = (torch.softmax(scores, dim=-1) * torch.softmax(scores, dim=-2)).mean(dim=-1)
    return mapped, confidence


def inputs(groups, frames, heads, nq, nk, d, dv=None, sharpness=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    query = sharpness * torch.randn(groups, frames, heads, nq, d, generator=generator)
    ref_key = sharpness * torch.randn(groups, heads, nk, d, generator=generator)
    ref_value = torch.randn(groups, heads, nk, dv or d, generator=generator)
    return query, ref_key, ref_value


def test_the_kernel_builds_on_this_machine():
    # this project's machines and CI have a C++ compiler and an AVX2/AVX-512 CPU: the kernel must serve
    assert shutil.which("c++") and torch.backends.cpu.get_cpu_capability() in cpu_kernels.ISA_FLAGS
    assert cpu_kernels.load() is not None


SHAPES = [
    (2, 3, 2, 37, 100, 8, None),  # a compiled head size; queries and keys not whole vectors / blocks
    (1, 2, 1, 16, 64, 5, None),  # the generic head size
    (1, 1, 2, 70, 130, 40, None),  # SD 1.5's up_blocks.3 head size, three key blocks
    (2, 2, 1, 33, 17, 16, None),  # fewer keys than one block
    (1, 2, 2, 20, 70, 8, 12),  # value channels differ from the key's
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sharpness", [1.0, 3.0])
def test_value_mapping_and_confidence_equal_the_explicit_math(shape, sharpness):
    query, ref_key, ref_value = inputs(*shape, sharpness=sharpness)
    mapped, confidence = cpu_kernels.dual_softmax_attention(query, ref_key, ref_value)
    expected_mapped, expected_confidence = explicit(query, ref_key, ref_value)
    assert mapped.dtype == confidence.dtype == torch.float32
    assert mapped.shape == expected_mapped.shape and confidence.shape == expected_confidence.shape
    assert torch.allclose(mapped.double(), expected_mapped, atol=1e-5, rtol=1e-5)
    assert torch.allclose(confidence.double(), expected_confidence, rtol=3e-5, atol=0)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("q", [0.05, 0.3])
def test_mask_equals_the_blockwise_references(shape, q):
    query, ref_key, ref_value = inputs(*shape, seed=1)
    _, confidence = cpu_kernels.dual_softmax_attention(query, ref_key, ref_value)
    reference = dual_softmax_confidence(query, ref_key[:, None])
    mask = confidence_mask(confidence, q)
    assert torch.equal(mask, confidence_mask(reference, q)) and not mask.all()


def test_strided_inputs_give_the_same_result_as_contiguous_ones():
    # the processor hands over views of (batch, tokens, heads * d) projections
    query, ref_key, ref_value = inputs(2, 3, 2, 37, 100, 8)
    strided_query = query.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    strided_key = ref_key.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided_query.is_contiguous() and not strided_key.is_contiguous()
    contiguous = cpu_kernels.dual_softmax_attention(query, ref_key, ref_value)
    strided = cpu_kernels.dual_softmax_attention(strided_query, strided_key, ref_value)
    assert all(torch.equal(a, b) for a, b in zip(contiguous, strided))


def extreme_scores(kind: str):
    query, ref_key, ref_value = inputs(1, 2, 1, 20, 100, 8, seed=2)
    if kind == "rows apart":  # one query's scores sit ~85 below the others': its weight a_q would underflow
        ref_key[..., :] = 1.0
        query[0, 0, 0, 0] = -15.0
        query[0, 0, 0, 1] = 15.0
    else:  # "late maximum": a key after the first block scores ~56 above it, E^2 would overflow
        query[..., :] = 1.0
        ref_key[..., :64, :] = 0.0
        ref_key[0, 0, 90, :] = 20.0
    return query, ref_key, ref_value


@pytest.mark.parametrize("kind", ["rows apart", "late maximum"])
def test_out_of_range_scores_are_handed_back_and_the_processor_stays_exact(kind):
    query, ref_key, ref_value = extreme_scores(kind)
    before = cpu_kernels.STATS["out_of_range"]
    assert cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is None
    assert cpu_kernels.STATS["out_of_range"] == before + 1
    processor = DualSoftmaxFilterProcessor(FrameReference(0, 1))
    mapped, confidence = processor.mapping_and_confidence(query, ref_key, ref_value)
    expected_mapped, expected_confidence = explicit(query, ref_key, ref_value)
    assert torch.allclose(mapped.double(), expected_mapped, atol=1e-5, rtol=1e-5)
    assert torch.allclose(confidence.double(), expected_confidence, rtol=1e-4, atol=1e-30)


def test_the_kernel_stands_aside_where_it_does_not_apply(monkeypatch):
    query, ref_key, ref_value = inputs(1, 2, 1, 16, 20, 8)
    assert cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is not None
    assert cpu_kernels.dual_softmax_attention(query.double(), ref_key.double(), ref_value.double()) is None
    assert cpu_kernels.dual_softmax_attention(query.bfloat16(), ref_key.bfloat16(), ref_value.bfloat16()) is None
    with torch.enable_grad():
        assert cpu_kernels.dual_softmax_attention(query.requires_grad_(), ref_key, ref_value) is None
    query.requires_grad_(False)
    monkeypatch.setenv(cpu_kernels.SWITCH, "off")
    assert cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is None


def own_inputs(groups, frames, heads, nq, d, dv=None, seed=0):
    """query, key, value of the frames' own and a value mapping to keep, ``(groups, frames, heads, tokens, .)``."""
    generator = torch.Generator().manual_seed(seed)
    query, key = (2.0 * torch.randn(groups, frames, heads, nq, d, generator=generator) for _ in range(2))
    value, mapped = (torch.randn(groups, frames, heads, nq, dv or d, generator=generator) for _ in range(2))
    return mapped, query, key, value


def explicit_own(mask, mapped, query, key, value):
    """Eq. 4 in float64 with full score matrices: where(mask, mapped, softmax(Q_f K_f^T / sqrt(d)) V_f)."""
    scores = query.double() @ key.double().transpose(-1, -2) / math.sqrt(query.shape[-1])
    own = torch.softmax(scores, dim=-1) @ value.double()
    return torch.where(mask[..., None], mapped.double(), own)


def slice_masks(groups, frames, heads, nq, seed=0):
    """Masks whose slices send back none, one, all, a whole vector's worth and a random share of their
    queries: the counts the kernel must gather without padding."""
    generator = torch.Generator().manual_seed(seed)
    keep = torch.rand(groups, frames, heads, nq, generator=generator) > 0.2
    flat = keep.view(-1, nq)
    flat[0] = True
    flat[1 % len(flat)] = False
    flat[2 % len(flat), :] = True
    flat[2 % len(flat), nq // 2] = False
    if len(flat) > 3 and nq >= 16:
        flat[3, :] = True
        flat[3, :16] = False
    return keep


@pytest.mark.parametrize("shape", [(2, 3, 2, 37, 8, None), (1, 2, 2, 40, 5, None), (1, 2, 2, 70, 40, None),
                                   (2, 1, 2, 33, 8, 12)])
def test_masked_own_attention_equals_eq4_where_the_mask_sends_queries_back(shape):
    groups, frames, heads, nq, d, dv = shape
    mapped, query, key, value = own_inputs(groups, frames, heads, nq, d, dv)
    mask = slice_masks(groups, frames, heads, nq)
    got = cpu_kernels.masked_own_attention(mask, mapped, query, key, value)
    assert got.shape == mapped.shape and got.dtype == torch.float32
    assert torch.equal(got[mask], mapped[mask])  # kept rows: the value mapping itself, untouched
    assert not torch.equal(got[~mask], mapped[~mask])
    assert torch.allclose(got.double(), explicit_own(mask, mapped, query, key, value), atol=2e-6, rtol=1e-5)
    assert mapped.data_ptr() != got.data_ptr()  # a new tensor, as own_attention_where's


def test_masked_own_attention_takes_strided_views_and_matches_the_padded_stock_path():
    # the processor hands over views of (batch, tokens, heads * d) projections
    mapped, query, key, value = own_inputs(2, 3, 2, 37, 8)
    mask = slice_masks(2, 3, 2, 37, seed=1)
    views = [x.transpose(2, 3).contiguous().transpose(2, 3) for x in (mapped, query, key, value)]
    assert not any(x.is_contiguous() for x in views)
    got = cpu_kernels.masked_own_attention(mask, *views)
    assert torch.equal(got, cpu_kernels.masked_own_attention(mask, mapped, query, key, value))
    assert torch.allclose(got, own_attention_where(mask, mapped, query, key, value), atol=2e-6, rtol=1e-5)


def test_the_processor_filters_through_the_unpadded_kernel_with_the_stock_result(monkeypatch):
    mapped, query, key, value = own_inputs(2, 4, 2, 48, 8)
    processor = DualSoftmaxFilterProcessor(FrameReference(1, 2), quantile=0.3)
    calls = []
    monkeypatch.setattr(attention, "masked_own_attention",
                        lambda *args: calls.append(args) or cpu_kernels.masked_own_attention(*args))
    with_kernel = processor.self_attention(query, key, value)
    assert len(calls) == 1 and not calls[0][0].all()
    monkeypatch.setenv(cpu_kernels.SWITCH, "0")
    stock = processor.self_attention(query, key, value)
    assert len(calls) == 2  # asked, and stood aside
    assert torch.allclose(with_kernel, stock, atol=2e-6, rtol=1e-5)


def test_masked_own_attention_stands_aside_where_it_does_not_apply(monkeypatch):
    mapped, query, key, value = own_inputs(1, 2, 1, 16, 8)
    mask = slice_masks(1, 2, 1, 16)
    assert cpu_kernels.masked_own_attention(mask, mapped, query, key, value) is not None
    assert cpu_kernels.masked_own_attention(mask.float(), mapped, query, key, value) is None
    halves = (x.bfloat16() for x in (mapped, query, key, value))
    assert cpu_kernels.masked_own_attention(mask, *halves) is None
    with torch.enable_grad():
        assert cpu_kernels.masked_own_attention(mask, mapped, query.requires_grad_(), key, value) is None
    query.requires_grad_(False)
    monkeypatch.setenv(cpu_kernels.SWITCH, "off")
    assert cpu_kernels.masked_own_attention(mask, mapped, query, key, value) is None


@pytest.fixture
def fresh_load():
    cpu_kernels.load.cache_clear()
    yield
    cpu_kernels.load.cache_clear()  # the next load() finds the real library built and loaded


def test_a_failed_build_is_one_warning_and_the_stock_path(fresh_load, monkeypatch, tmp_path, caplog):
    import torch.utils.cpp_extension

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension: c++: command not found")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setenv(cpu_kernels.CACHE, str(tmp_path))
    query, ref_key, ref_value = inputs(1, 2, 1, 16, 20, 8)
    with caplog.at_level(logging.WARNING, logger="direct2v.render.cpu_kernels"):
        assert cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is None
        assert cpu_kernels.dual_softmax_attention(query, ref_key, ref_value) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "command not found" in warnings[0] and "stock-kernel path" in warnings[0]


def test_a_cpu_without_avx_gets_no_kernel(fresh_load, monkeypatch, caplog):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    assert "DEFAULT" not in cpu_kernels.ISA_FLAGS
    with caplog.at_level(logging.WARNING, logger="direct2v.render.cpu_kernels"):
        assert cpu_kernels.load() is None
    assert "DEFAULT" in caplog.text


def test_the_library_name_follows_the_source_and_the_instruction_set(monkeypatch, tmp_path):
    names = {isa: cpu_kernels.library_name(flags) for isa, flags in cpu_kernels.ISA_FLAGS.items()}
    edited = tmp_path / "dual_softmax.cpp"
    edited.write_bytes(cpu_kernels.SOURCE.read_bytes() + b"\n// edited\n")
    monkeypatch.setattr(cpu_kernels, "SOURCE", edited)
    names["edited"] = cpu_kernels.library_name(cpu_kernels.ISA_FLAGS["AVX2"])
    assert len(set(names.values())) == 3 and all(n.startswith("direct2v_dsf_") for n in names.values())


# --- the processor's CPU operators: one opaque call each, eager and inside torch.compile ---------------


def operator_cases():
    """(name, mapping inputs, own-attention inputs, kernel switch): the kernels serving, the processor's
    strided views, the kernels off (the stock math inside the same operators), out-of-range scores."""
    query, ref_key, ref_value = inputs(2, 3, 2, 37, 40, 8)
    mapped, _, key, value = own_inputs(2, 3, 2, 37, 8)
    mask = slice_masks(2, 3, 2, 37)
    views = [x.transpose(-2, -3).contiguous().transpose(-2, -3) for x in (query, key, value)]
    yield "kernels", (query, ref_key, ref_value), (mask, mapped, query, key, value), "1"
    yield "strided views", (views[0], ref_key, ref_value), (mask, mapped, *views), "1"
    yield "kernels off", (query, ref_key, ref_value), (mask, mapped, query, key, value), "0"
    extreme = extreme_scores("late maximum")  # (1, 2, 1, 20, 8) queries: the kernel hands the call back
    mapped, _, key, value = own_inputs(1, 2, 1, 20, 8)
    yield "out of range", extreme, (slice_masks(1, 2, 1, 20), mapped, extreme[0], key, value), "1"


@pytest.mark.parametrize("case", list(operator_cases()), ids=lambda case: case[0])
def test_the_cpu_operators_outputs_match_their_fake_shapes_and_the_stock_math(case, monkeypatch):
    _, mapping_args, own_args, switch = case
    monkeypatch.setenv(cpu_kernels.SWITCH, switch)
    # schema, fake (meta) implementation against the real outputs' shapes, strides and dtypes, AOT dispatch
    for operator, args in ((attention.cpu_mapping_and_confidence, (*mapping_args, 2**24)),
                           (attention.cpu_own_attention_where, own_args)):
        assert all(result == "SUCCESS" for result in torch.library.opcheck(operator, args).values())
    mapped, confidence = attention.cpu_mapping_and_confidence(*mapping_args, 2**24)
    expected_mapped, expected_confidence = explicit(*mapping_args)
    assert torch.allclose(mapped.double(), expected_mapped, atol=1e-5, rtol=1e-5)
    assert torch.allclose(confidence.double(), expected_confidence, rtol=1e-4, atol=1e-30)
    own = attention.cpu_own_attention_where(*own_args)
    assert torch.allclose(own.double(), explicit_own(*own_args), atol=2e-6, rtol=1e-5)


def test_an_inductor_compiled_dsf_layer_runs_both_kernels_with_eager_results(monkeypatch):
    # Inside torch.compile each operator is one opaque call, so the compiled graph runs our kernels too
    # and the own attention stays gathered; traced, it would be every query's, in stock kernels.
    query, key, value = (x.reshape(2, 4, 2, 48, 8) for x in own_inputs(2, 4, 2, 48, 8)[1:])
    processor = DualSoftmaxFilterProcessor(FrameReference(1, 2), quantile=0.3)
    own_calls = []
    monkeypatch.setattr(attention, "masked_own_attention",
                        lambda *args: own_calls.append(args) or cpu_kernels.masked_own_attention(*args))
    eager = processor.self_attention(query, key, value)
    torch._dynamo.reset()
    compiled = torch.compile(processor.self_attention, fullgraph=True, backend="inductor")
    compiled(query, key, value)  # compiles
    before = cpu_kernels.STATS["calls"], len(own_calls)
    result = compiled(query, key, value)
    assert (cpu_kernels.STATS["calls"], len(own_calls)) == (before[0] + 1, before[1] + 1)
    assert torch.allclose(result, eager, atol=1e-6, rtol=1e-5)
