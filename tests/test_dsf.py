"""Dual-softmax filtering (paper Eq. 3-4): the confidence, the quantile and mask, the processor, the pipeline."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

import direct2v.render.attention
import direct2v.render.cpu_kernels
import direct2v.render.dsf
from direct2v.render.attention import DualSoftmaxFilterProcessor, RotationalValueMappingProcessor
from direct2v.render.dsf import (
    DSF_CHUNK_ELEMENTS,
    attention_with_lse,
    column_lse,
    confidence_from_lse,
    confidence_mask,
    dual_softmax_confidence,
    own_attention_where,
    quantile,
    query_rows_per_block,
)
from direct2v.render.reference import AnchorKVCache, FrameReference

FAST = {"num_inference_steps": 10, "t0": 6, "t1": 8, "guidance_scale": 7.5}
PROMPTS = ["a red fox runs across a snowy field", "the fox stops and looks up", "the fox jumps into the snow"]


def explicit_confidence(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Eq. 3 written out: the full score matrix, both softmaxes of it, mean over keys."""
    scores = query.double() @ key.double().transpose(-1, -2) / math.sqrt(query.shape[-1])
    dual = torch.softmax(scores, dim=-1) * torch.softmax(scores, dim=-2)
    return dual.mean(dim=-1)


# --- the confidence on hand-made inputs -----------------------------------------------------------


def test_confidence_of_a_sharp_identity_match_has_a_closed_form():
    n, c = 6, 3.0
    q = k = c * torch.eye(n)  # S = c^2/sqrt(n) on the diagonal, 0 elsewhere
    s = c * c / math.sqrt(n)
    on, off = math.exp(s) / (math.exp(s) + n - 1), 1 / (math.exp(s) + n - 1)  # row = column softmax here
    expected = (on**2 + (n - 1) * off**2) / n
    assert torch.allclose(dual_softmax_confidence(q, k), torch.full((n,), expected), rtol=1e-6, atol=0)


def test_identical_queries_have_confidence_one_over_nq_nk():
    # Identical rows: the column softmax is 1/Nq everywhere, so C_qk = softmax_k / Nq and its mean 1/(Nq Nk).
    query = torch.randn(1, 8).expand(5, 8)
    key = torch.randn(7, 8)
    assert torch.allclose(dual_softmax_confidence(query, key), torch.full((5,), 1 / 35), rtol=1e-6, atol=0)


def test_matched_queries_are_more_confident_than_unmatched_ones():
    key = 4.0 * torch.eye(8)
    query = torch.cat([4.0 * torch.eye(8)[:4], torch.zeros(4, 8)])  # 4 exact matches, 4 with no preference
    confidence = dual_softmax_confidence(query, key)
    assert confidence[:4].min() > 3 * confidence[4:].max()
    assert torch.equal(confidence_mask(confidence, 0.5), torch.tensor([True] * 4 + [False] * 4))


def test_both_softmaxes_are_of_the_same_matrix_not_the_demo_transpose():
    torch.manual_seed(0)
    query, key = torch.randn(2, 3, 9, 4), torch.randn(2, 3, 9, 4)
    ours = dual_softmax_confidence(query, key)
    assert torch.allclose(ours.double(), explicit_confidence(query, key), rtol=1e-5, atol=0)
    scores = query @ key.transpose(-1, -2) / 2
    demo = (torch.softmax(scores, -1) * torch.softmax(scores.transpose(-1, -2), -1)).mean(-1)  # pairs (q,k)/(k,q)
    assert not torch.allclose(ours, demo, rtol=1e-3, atol=0)


def test_query_and_key_counts_may_differ():
    torch.manual_seed(1)
    query, key = torch.randn(3, 11, 5), torch.randn(3, 4, 5)
    assert dual_softmax_confidence(query, key).shape == (3, 11)
    assert torch.allclose(dual_softmax_confidence(query, key).double(), explicit_confidence(query, key), rtol=1e-5)


# --- chunking ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_elements", [1, 5, 37, 200, 10**9])
def test_chunked_confidence_equals_the_full_matrix(max_elements):
    torch.manual_seed(2)
    query, key = 2 * torch.randn(2, 3, 23, 8), 2 * torch.randn(2, 1, 17, 8)  # key broadcast over dim 1
    ours = dual_softmax_confidence(query, key, max_elements=max_elements)
    assert ours.shape == (2, 3, 23) and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), explicit_confidence(query, key), rtol=1e-5, atol=0)


def test_block_size_respects_the_budget():
    assert query_rows_per_block(lead=16, num_keys=4096, max_elements=2**24) == 256  # 512 px, 2 CFG x 8 heads
    assert query_rows_per_block(lead=16, num_keys=4096, max_elements=10) == 1  # never less than a row
    assert query_rows_per_block(lead=1, num_keys=10, max_elements=35) == 3
    with pytest.raises(ValueError):
        query_rows_per_block(lead=1, num_keys=10, max_elements=0)


def test_half_precision_inputs_give_float32_confidences():
    torch.manual_seed(3)
    query, key = torch.randn(4, 64, 8), torch.randn(4, 64, 8)
    low = dual_softmax_confidence(query.bfloat16(), key.bfloat16())
    assert low.dtype == torch.float32 and torch.isfinite(low).all() and (low > 0).all()
    assert torch.allclose(low, dual_softmax_confidence(query, key), rtol=0.1)


# --- the fused path against the blockwise reference ------------------------------------------------


def scores_of(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    return query.double() @ key.double().transpose(-1, -2) / math.sqrt(query.shape[-1])


def test_attention_with_lse_is_sdpa_and_the_row_logsumexp():
    torch.manual_seed(4)
    query, key, value = torch.randn(2, 3, 19, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    out, lse = attention_with_lse(query, key, value)
    assert torch.allclose(out, torch.nn.functional.scaled_dot_product_attention(query, key, value), atol=1e-6)
    assert lse.shape == (2, 3, 19) and lse.dtype == torch.float32
    assert torch.allclose(lse.double(), scores_of(query, key).logsumexp(-1), rtol=1e-6, atol=1e-6)


def test_column_lse_is_the_logsumexp_over_the_queries():
    torch.manual_seed(5)
    query, key = 3 * torch.randn(2, 3, 19, 8), 3 * torch.randn(2, 3, 11, 8)
    lse = column_lse(query, key)
    assert lse.shape == (2, 3, 11) and lse.dtype == torch.float32
    assert torch.allclose(lse.double(), scores_of(query, key).logsumexp(-2), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("sharpness", [0.3, 1.0, 4.0])  # logits of order 0.1 .. 50
@pytest.mark.parametrize("sizes", [(23, 17), (17, 23), (64, 64)])
@pytest.mark.parametrize("head_dim", [8, 5])
def test_fused_confidence_equals_the_blockwise_reference(sharpness, sizes, head_dim):
    torch.manual_seed(6)
    query = sharpness * torch.randn(2, 4, sizes[0], head_dim)
    key = sharpness * torch.randn(2, 4, sizes[1], head_dim)
    row_lse = attention_with_lse(query, key, key)[1]
    fused = confidence_from_lse(query, key, row_lse, column_lse(query, key))
    reference = dual_softmax_confidence(query, key, max_elements=50)
    assert fused.dtype == torch.float32 and fused.shape == reference.shape
    assert torch.allclose(fused, reference, rtol=2e-5, atol=0)
    assert torch.allclose(fused.double(), explicit_confidence(query, key), rtol=2e-5, atol=0)
    for q in (0.05, 0.5):
        assert torch.equal(confidence_mask(fused, q), confidence_mask(reference, q))


def kernel_dtypes(monkeypatch) -> list[torch.dtype]:
    """Record the dtype of every fused-kernel call the DSF functions make."""
    seen, real = [], direct2v.render.dsf.attention_with_lse

    def spy(query, key, value, scale=None):
        seen.append(query.dtype)
        return real(query, key, value, scale=scale)

    monkeypatch.setattr(direct2v.render.dsf, "attention_with_lse", spy)
    return seen


def near_threshold(reference: torch.Tensor, q: float, rtol: float) -> torch.Tensor:
    """Queries whose reference confidence lies within ``rtol`` of the reference threshold."""
    phi = quantile(reference, q)
    return (reference - phi).abs() <= rtol * phi


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sharpness", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("head_dim", [8, 40])
def test_fused_confidence_of_half_precision_inputs_stays_in_their_dtype_at_float32_precision(
    dtype, sharpness, head_dim, monkeypatch
):
    """On a GPU rendering in fp16 both confidence calls stay on flash attention (no float32 copies),
    and the confidences still match Eq. 3 in float64 on the same half-precision values."""
    torch.manual_seed(7)
    query = (sharpness * torch.randn(2, 4, 96, head_dim)).to(dtype)
    key = (sharpness * torch.randn(2, 4, 80, head_dim)).to(dtype)
    row_lse = attention_with_lse(query, key, key)[1]
    seen = kernel_dtypes(monkeypatch)
    fused = confidence_from_lse(query, key, row_lse, column_lse(query, key))
    assert seen == [dtype, dtype]
    assert fused.dtype == torch.float32
    exact = explicit_confidence(query, key)
    # this CPU's half-precision flash kernel keeps its log-sum-exps to about 5e-5 (float32 inputs: 1e-6)
    assert torch.allclose(fused.double(), exact, rtol=3e-4, atol=0)
    for q in (0.05, 0.5):
        differ = confidence_mask(fused, q) != confidence_mask(exact, q)
        assert not (differ & ~near_threshold(exact, q, rtol=3e-4)).any()


def test_the_column_channels_carry_float32_precision_in_half_precision_inputs():
    """``-c_k sqrt(d) / 2`` of order 100 needs more bits than fp16 (11) or bf16 (8) hold: split over
    COLUMN_PARTS channels it keeps float32's, so the scores are exactly ``2 S - c`` (checked through
    an attention call whose log-sum-exp over ONE key is that score)."""
    torch.manual_seed(8)
    c = 29.987654  # a large normaliser whose channel value needs three bf16 parts:
    channel = torch.tensor(c * math.sqrt(8) / 2)
    two_parts = channel.bfloat16().float() + (channel - channel.bfloat16().float()).bfloat16().float()
    assert (channel - two_parts).abs() > 1e-4  # two would leave 2.3e-4 out (1.6e-4 in the score)
    for dtype in (torch.float16, torch.bfloat16):
        query, key = torch.randn(1, 1, 5, 8).to(dtype), torch.randn(1, 1, 1, 8).to(dtype)
        row_lse = torch.zeros(1, 1, 5)
        # with one key, mean_k C_qk = exp(2 S_q0 - c_0 - r_q): exp of the score itself
        confidence = confidence_from_lse(query, key, row_lse, torch.tensor([[[c]]]))
        score = 2 * scores_of(query, key)[..., 0] - c
        assert torch.allclose(confidence.double().log(), score, rtol=0, atol=2e-5)


def test_fused_path_is_used_where_a_kernel_exists_and_none_elsewhere():
    query = torch.randn(1, 1, 4, 8)
    assert attention_with_lse(query, query, query) is not None  # CPU
    assert attention_with_lse(query.to("meta"), query.to("meta"), query.to("meta")) is None


@pytest.mark.parametrize(
    "mask_kind", ["random", "all kept", "none kept", "one slice none kept"]
)
def test_own_attention_is_computed_only_where_the_mask_sends_queries_back(mask_kind):
    torch.manual_seed(8)
    query, key, value = torch.randn(2, 3, 2, 13, 8), torch.randn(2, 3, 2, 11, 8), torch.randn(2, 3, 2, 11, 8)
    mapped = torch.randn(2, 3, 2, 13, 8)
    mask = {
        "random": torch.rand(2, 3, 2, 13) > 0.3,
        "all kept": torch.ones(2, 3, 2, 13, dtype=torch.bool),
        "none kept": torch.zeros(2, 3, 2, 13, dtype=torch.bool),
        "one slice none kept": torch.ones(2, 3, 2, 13, dtype=torch.bool).index_fill(1, torch.tensor([1]), False),
    }[mask_kind]
    own = torch.nn.functional.scaled_dot_product_attention(query.flatten(0, 2), key.flatten(0, 2), value.flatten(0, 2))
    expected = torch.where(mask[..., None], mapped, own.view_as(mapped))
    ours = own_attention_where(mask, mapped, query, key, value)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert ours.data_ptr() != mapped.data_ptr()  # a new tensor: the input is left as it was


def test_own_attention_where_touches_only_the_masked_out_queries():
    torch.manual_seed(9)
    query, key, value = torch.randn(1, 2, 1, 9, 4), torch.randn(1, 2, 1, 9, 4), torch.randn(1, 2, 1, 9, 4)
    mapped = torch.randn(1, 2, 1, 9, 4)
    mask = torch.ones(1, 2, 1, 9, dtype=torch.bool)
    mask[0, 1, 0, 4] = False
    ours = own_attention_where(mask, mapped, query, key, value)
    changed = (ours != mapped).any(-1)
    assert changed.sum() == 1 and changed[0, 1, 0, 4]


# --- quantile and mask ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 10, 101, 1000])
@pytest.mark.parametrize("q", [0.0, 0.01, 0.05, 0.3, 0.5, 0.999, 1.0])
@pytest.mark.parametrize("selection", [True, False], ids=["topk (CPU)", "sort (GPUs)"])
def test_quantile_is_torch_quantile_linear(size, q, selection):
    values = torch.randn(size, generator=torch.Generator().manual_seed(size))
    # torch.quantile computes the position q (n - 1) in the input's float32 (a ~1e-7 relative error
    # in the interpolation weight); ours computes it in double, so compare with float32 tolerance.
    ours = quantile(values, q, selection=selection)
    assert torch.allclose(ours, torch.quantile(values, q), rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours.double(), torch.quantile(values.double(), q), rtol=1e-6, atol=1e-7)


def test_quantile_flattens_and_hits_the_extremes():
    values = torch.randn(3, 4, 5)
    assert quantile(values, 0.0) == values.min() and quantile(values, 1.0) == values.max()
    assert quantile(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), 0.25) == 2.0
    assert quantile(torch.tensor([0.0, 10.0]), 0.05) == pytest.approx(0.5)


@pytest.mark.parametrize("order", ["random", "ascending", "descending", "ties"])
@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.95, 1.0])  # both ends of the selection
def test_quantile_does_not_depend_on_the_input_order(order, q):
    values = torch.randn(4097, generator=torch.Generator().manual_seed(1))
    values = {
        "random": values,
        "ascending": values.sort().values,
        "descending": values.sort(descending=True).values,
        "ties": values.round(decimals=1),
    }[order]
    assert torch.allclose(quantile(values, q).double(), torch.quantile(values.double(), q), rtol=1e-6, atol=1e-7)


def test_quantile_beyond_torch_quantile_size_limit():
    values = torch.arange(2**24 + 10, dtype=torch.float32).flip(0)
    with pytest.raises(RuntimeError):
        torch.quantile(values, 0.05)
    position = 0.05 * (values.numel() - 1)  # exact in double; 838861.15 here, between two integers
    assert quantile(values, 0.05).item() == pytest.approx(position, abs=0.02)


def test_quantile_validates():
    with pytest.raises(ValueError):
        quantile(torch.tensor([]), 0.5)
    with pytest.raises(ValueError):
        quantile(torch.ones(3), 1.5)


def test_mask_is_strictly_above_the_quantile():
    confidence = torch.tensor([[0.1, 0.2], [0.2, 0.4]])
    assert torch.equal(confidence_mask(confidence, 0.0), confidence > 0.1)  # only the minimum keeps its own
    assert torch.equal(confidence_mask(confidence, 0.5), confidence > 0.2)  # ties at phi keep their own too
    assert confidence_mask(torch.full((5,), 0.3), 0.05).sum() == 0  # all equal: nobody is above


# --- the processor against a straightforward reference implementation ----------------------------


def reference_dsf(
    attn: Attention,
    hidden: torch.Tensor,
    groups: int,
    ref: int,
    q: float,
    ref_hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 2-4 written out, (group, frame, head) by (group, frame, head), full N x N matrices.

    ``ref_hidden``: ``(groups, tokens, channels)`` of a reference frame outside the batch (a cached
    anchor); else the reference is frame ``ref`` of each group. One quantile over everything.
    """
    frames = hidden.shape[0] // groups
    query, key, value = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)
    if ref_hidden is not None:
        ref_key, ref_value = attn.to_k(ref_hidden), attn.to_v(ref_hidden)
    heads, dim = attn.heads, query.shape[-1] // attn.heads
    mapped, own, confidence = {}, {}, {}
    for g in range(groups):
        for f in range(frames):
            b = g * frames + f
            for h in range(heads):
                cut = slice(h * dim, (h + 1) * dim)
                qf, kf, vf = query[b, :, cut], key[b, :, cut], value[b, :, cut]
                if ref_hidden is None:
                    kr, vr = key[g * frames + ref, :, cut], value[g * frames + ref, :, cut]
                else:
                    kr, vr = ref_key[g, :, cut], ref_value[g, :, cut]
                scores = qf @ kr.T / math.sqrt(dim)
                mapped[b, h] = torch.softmax(scores, dim=-1) @ vr
                own[b, h] = torch.softmax(qf @ kf.T / math.sqrt(dim), dim=-1) @ vf
                dual = torch.softmax(scores, dim=-1) * torch.softmax(scores, dim=0)
                confidence[b, h] = dual.mean(dim=-1)
    phi = torch.quantile(torch.cat(list(confidence.values())), q)
    rows = []
    for b in range(hidden.shape[0]):
        per_head = []
        for h in range(heads):
            keep = (confidence[b, h] > phi)[:, None]
            per_head.append(torch.where(keep, mapped[b, h], own[b, h]))
        rows.append(torch.cat(per_head, dim=-1))
    return attn.to_out[0](torch.stack(rows))


def make_attention(seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    return Attention(query_dim=32, heads=4, dim_head=8).eval()


def stock_kernels_only(monkeypatch) -> None:
    """Without our one-pass CPU kernel: the processor takes the three fused stock-kernel calls."""
    monkeypatch.setenv(direct2v.render.cpu_kernels.SWITCH, "0")


def blockwise_only(monkeypatch) -> None:
    """As on a device without fused kernels: the processor takes the blockwise reference path."""
    stock_kernels_only(monkeypatch)
    monkeypatch.setattr(direct2v.render.attention, "attention_with_lse", lambda *args, **kwargs: None)


@pytest.fixture(params=["one-pass", "fused", "blockwise"])
def dsf_path(request, monkeypatch):
    """Each way the processor can compute DSF; the one-pass kernel's calls are counted to prove it served."""
    if request.param == "fused":
        stock_kernels_only(monkeypatch)
    elif request.param == "blockwise":
        blockwise_only(monkeypatch)
    calls_before = direct2v.render.cpu_kernels.STATS["calls"]
    yield request.param
    served = direct2v.render.cpu_kernels.STATS["calls"] > calls_before
    assert served == (request.param == "one-pass")


@pytest.mark.parametrize("groups, ref", [(2, 0), (2, 2), (1, 1)])  # with and without CFG
@pytest.mark.parametrize("q", [0.05, 0.5])
@pytest.mark.parametrize("max_elements", [7, DSF_CHUNK_ELEMENTS])
def test_dsf_processor_matches_explicit_reference(groups, ref, q, max_elements, dsf_path):
    attn = make_attention()
    hidden = 3 * torch.randn(groups * 3, 10, 32)
    attn.set_processor(DualSoftmaxFilterProcessor(FrameReference(ref, groups), quantile=q, max_elements=max_elements))
    with torch.no_grad():
        ours = attn(hidden)
        expected = reference_dsf(attn, hidden, groups, ref, q)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


def test_dsf_processor_with_a_cached_anchor_reference_matches_explicit_reference(dsf_path):
    attn = make_attention(1)
    groups, anchors = 2, 2
    anchor_hidden = 3 * torch.randn(groups * anchors, 10, 32)
    section_hidden = 3 * torch.randn(groups * 3, 10, 32)
    cache = AnchorKVCache({(4, 1)}, num_anchors=anchors)
    state = FrameReference(cfg_groups=groups, step=4, record_to=cache)
    attn.set_processor(DualSoftmaxFilterProcessor(state, quantile=0.3, layer="layer", max_elements=13))
    with torch.no_grad():
        attn(anchor_hidden)  # the anchor pass stores anchor 1's key/value for step 4
        state.record_to, state.anchors = None, cache
        state.point_to(1, 4)  # virtual batch [a0, a1, s0, s1, s2], ref a1
        ours = attn(section_hidden)
        ref_hidden = anchor_hidden.view(groups, anchors, 10, 32)[:, 1]
        expected = reference_dsf(attn, section_hidden, groups, 0, 0.3, ref_hidden=ref_hidden)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("groups, frames, ref", [(2, 4, 1), (1, 3, 0)])
@pytest.mark.parametrize("fast_path, dtype", [("one-pass", torch.float32), ("fused", torch.float32),
                                              ("fused", torch.float16), ("fused", torch.bfloat16)])
def test_fused_and_blockwise_paths_give_the_same_mask_and_output(groups, frames, ref, fast_path, dtype, monkeypatch):
    """The fused path in half precision is what a GPU rendering in fp16 runs (the one-pass CPU kernel
    stands aside for it); the blockwise reference computes its confidences in float32."""
    attn = make_attention(4).to(dtype)
    hidden = (3 * torch.randn(groups * frames, 24, 32)).to(dtype)
    masks = []

    def recording_mask(confidence, q):
        masks.append(confidence_mask(confidence, q))
        return masks[-1]

    monkeypatch.setattr(direct2v.render.attention, "confidence_mask", recording_mask)
    attn.set_processor(DualSoftmaxFilterProcessor(FrameReference(ref, groups), quantile=0.05))
    if fast_path == "fused":
        stock_kernels_only(monkeypatch)
    with torch.no_grad():
        fused = attn(hidden)
        blockwise_only(monkeypatch)
        blockwise = attn(hidden)
    assert len(masks) == 2 and masks[0].shape == (groups, frames, 4, 24)
    assert torch.equal(masks[0], masks[1]) and not masks[0].all()
    assert torch.allclose(fused.float(), blockwise.float(), atol=1e-6 if dtype == torch.float32 else 0)


def test_confidence_falls_back_to_blockwise_when_only_the_confidence_calls_are_refused(monkeypatch):
    # as on a GPU whose kernel runs the value mapping but refuses the column call's inputs
    attn = make_attention(5)
    hidden = 3 * torch.randn(6, 10, 32)
    attn.set_processor(DualSoftmaxFilterProcessor(FrameReference(1, 2), quantile=0.3))
    stock_kernels_only(monkeypatch)
    monkeypatch.setattr(direct2v.render.dsf, "column_lse", lambda query, key: None)
    with torch.no_grad():
        assert torch.allclose(attn(hidden), reference_dsf(attn, hidden, 2, 1, 0.3), atol=1e-5, rtol=1e-5)


def test_dsf_mixes_mapped_and_own_attention():
    attn = make_attention(2)
    hidden = 3 * torch.randn(6, 10, 32)
    with torch.no_grad():
        outputs = {}
        for q in (0.0, 0.5, 0.99):
            attn.set_processor(DualSoftmaxFilterProcessor(FrameReference(0, 2), quantile=q))
            outputs[q] = attn(hidden)
        attn.set_processor(RotationalValueMappingProcessor(FrameReference(0, 2)))
        plain = attn(hidden)
    frames_1_2 = [1, 2, 4, 5]  # frame 0 is the reference: both branches agree there
    assert torch.allclose(outputs[0.0][[0, 3]], plain[[0, 3]], atol=1e-6)
    for q in (0.5, 0.99):
        assert not torch.allclose(outputs[q][frames_1_2], plain[frames_1_2], atol=1e-4)
    assert not torch.allclose(outputs[0.5], outputs[0.99], atol=1e-4)


def test_single_frame_batch_skips_the_filter():
    attn = make_attention(3)
    hidden = torch.randn(2, 10, 32)
    with torch.no_grad():
        attn.set_processor(DualSoftmaxFilterProcessor(FrameReference(0, 2), quantile=0.5))
        filtered = attn(hidden)
        attn.set_processor(RotationalValueMappingProcessor(FrameReference(0, 2)))
        assert torch.equal(filtered, attn(hidden))


@pytest.mark.parametrize("bad", [-0.1, 1.0, math.nan, "0.1", True])
def test_dsf_processor_rejects_bad_quantiles(bad):
    with pytest.raises(ValueError):
        DualSoftmaxFilterProcessor(FrameReference(), quantile=bad)


# --- the pipeline --------------------------------------------------------------------------------


def render(pipe, seed=0, **kwargs):
    return pipe(PROMPTS, generator=torch.Generator().manual_seed(seed), **{**FAST, **kwargs})


def test_dsf_is_on_by_default_and_changes_the_video(pipe):
    default, filtered, plain = render(pipe), render(pipe, dsf=True), render(pipe, dsf=False)
    assert np.array_equal(default, filtered)
    assert not np.array_equal(filtered, plain)
    assert np.array_equal(filtered, render(pipe, dsf=True))  # deterministic
    assert not np.array_equal(filtered, render(pipe, dsf=True, dsf_quantile=0.5))


def test_dsf_installs_its_processor_on_the_chosen_layers_only(pipe):
    seen = set()

    def spy(module, args, kwargs):
        seen.update(type(p) for p in module.attn_processors.values())

    handle = pipe.unet.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        render(pipe, dsf=True)
    finally:
        handle.remove()
    assert DualSoftmaxFilterProcessor in seen and RotationalValueMappingProcessor not in seen


@pytest.mark.parametrize("bad", [{"dsf_quantile": 1.0}, {"dsf_quantile": -0.5}, {"dsf": "yes"}])
def test_pipeline_rejects_bad_dsf_arguments(pipe, bad):
    with pytest.raises(ValueError, match="dsf"):
        render(pipe, **bad)


@pytest.mark.parametrize("settings", [{"batch_size": 2}, {"guidance_scale": 1.0}])  # chunked + CFG; one batch, no CFG
@pytest.mark.parametrize("fast_path", ["one-pass", "fused"])
def test_fused_path_renders_the_blockwise_video(pipe, settings, fast_path, monkeypatch):
    """Chunked (5 frames in sections of batch 2 around cached anchors) and not, with and without CFG."""
    prompts = PROMPTS + ["the fox runs away", "snow falls on the empty field"]
    kwargs = {**FAST, **settings, "output_type": "latent"}
    if fast_path == "fused":
        stock_kernels_only(monkeypatch)
    calls_before = direct2v.render.cpu_kernels.STATS["calls"]
    fused = pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs)
    assert (direct2v.render.cpu_kernels.STATS["calls"] > calls_before) == (fast_path == "one-pass")
    blockwise_only(monkeypatch)
    blockwise = pipe(prompts, generator=torch.Generator().manual_seed(0), **kwargs)
    assert fused.shape[0] == 5
    assert (fused - blockwise).abs().max() < 1e-4 * blockwise.abs().max()


def test_half_precision_render_on_the_fused_path_is_the_blockwise_video(tiny_sd_dir, monkeypatch):
    """What a GPU rendering in fp16 runs (the fused path with the confidence calls in fp16), on this
    CPU: chunked with cached anchors and CFG, against the blockwise path (float32 confidences)."""
    from direct2v.render.pipeline import DirecT2VPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers warns that fp16 is meant for accelerators
        half = DirecT2VPipeline.from_local_dir(tiny_sd_dir, torch_dtype=torch.float16)
    prompts = PROMPTS + ["the fox runs away", "snow falls on the empty field"]
    kwargs = {**FAST, "batch_size": 2, "output_type": "latent"}
    seen = kernel_dtypes(monkeypatch)
    fused = half(prompts, generator=torch.Generator().manual_seed(0), **kwargs)
    assert seen and set(seen) == {torch.float16}  # the confidence calls ran, in fp16
    blockwise_only(monkeypatch)
    blockwise = half(prompts, generator=torch.Generator().manual_seed(0), **kwargs)
    assert fused.dtype == torch.float16 and torch.isfinite(fused).all()
    assert (fused.float() - blockwise.float()).abs().max() <= 1e-3 * blockwise.float().abs().max()
