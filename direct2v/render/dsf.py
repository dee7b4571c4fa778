"""Dual-softmax filtering (paper Eq. 3-4), the math: small pure functions over (query, key, ...) tensors.

Two ways compute the per-query confidences, and must agree: :func:`dual_softmax_confidence` spells
Eq. 3 out block by block (the reference, and the path on devices without the fused kernels), and
:func:`confidence_from_lse` gets them from fused attention kernels that also return the
log-sum-exp (:func:`attention_with_lse`): the value mapping's own kernel call yields the row
statistics, :func:`column_lse` (query and key swapped) the column statistics, one more call the sum
itself. :func:`frame_confidence` picks between them for a video batch. Then :func:`quantile`,
:func:`confidence_mask`, and :func:`own_attention_where` for the queries the mask sends back to
their own frame. The processor that uses them is :class:`direct2v.render.attention.DualSoftmaxFilterProcessor`;
on CPU it first asks :mod:`direct2v.render.cpu_kernels`, whose one-pass kernel computes the same value
mapping and confidences, and whose second operator the same own attention without padding (tested
against these functions).
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

#: Largest score block (query rows x keys x heads...) the blockwise dual softmax (the reference, and
#: the path on devices without fused kernels) materialises at once, in elements: 2**24 float32 =
#: 64 MiB. At 512 px (4096 tokens, 2 CFG groups x 8 frames x 8 heads) that is 32 query rows per
#: block instead of a 4096 x 4096 matrix per head and frame. The fused path holds no score block.
DSF_CHUNK_ELEMENTS = 2**24


def query_rows_per_block(lead: int, num_keys: int, max_elements: int) -> int:
    """How many query rows of a ``(lead, rows, num_keys)`` score block fit in ``max_elements``."""
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise ValueError(f"max_elements must be a positive int, got {max_elements!r}")
    return max(1, max_elements // max(1, lead * num_keys))


def dual_softmax_confidence(
    query: torch.Tensor, key: torch.Tensor, max_elements: int = DSF_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Per-query confidence ``mean_k C_qk`` of the dual softmax ``C = softmax_k(S) * softmax_q(S)``.

    ``S = Q K^T / sqrt(d)`` is the score matrix of the value mapping itself (Eq. 2), and both
    softmaxes are taken over the SAME matrix: entry (q, k) of the row softmax (over keys) times
    entry (q, k) of the column softmax (over queries). (The authors' demo multiplied
    ``softmax(QK^T)`` by ``softmax(KQ^T)`` untransposed, pairing (q, k) with (k, q).)

    Never holds the whole ``Nq x Nk`` matrix: the column softmax only needs, per key, the
    log-sum-exp over all queries, so a first pass over blocks of query rows accumulates it (and the
    rows' own log-sum-exp), and a second pass recomputes each block's scores and averages
    ``exp(S_qk - lse_row_q) * exp(S_qk - lse_col_k)`` over the keys. A block holds at most
    ``max_elements`` scores (at least one query row). Computed in float32 whatever the inputs'
    dtype: the confidences are of order ``1/(Nq Nk)``, below fp16's range at 512 px.

    Args:
        query: ``(..., Nq, d)``; key: ``(..., Nk, d)``, leading dimensions broadcastable.
        max_elements: largest score block, in elements.
    Returns:
        float32 ``(..., Nq)``.
    """
    lead = torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
    num_queries, num_keys = query.shape[-2], key.shape[-2]
    rows = query_rows_per_block(math.prod(lead), num_keys, max_elements)
    scale = query.shape[-1] ** -0.5
    key_t = key.float().transpose(-1, -2)

    def scores(start: int) -> torch.Tensor:
        return (query[..., start : start + rows, :].float() @ key_t) * scale

    blocks = range(0, num_queries, rows)
    row_lse, col_lse = [], torch.full((*lead, num_keys), -math.inf, device=query.device)
    for start in blocks:
        block = scores(start)
        row_lse.append(block.logsumexp(dim=-1))
        col_lse = torch.logaddexp(col_lse, block.logsumexp(dim=-2))
    confidence = []
    for start, lse in zip(blocks, row_lse):
        block = scores(start)
        confidence.append(torch.exp(2 * block - lse[..., None] - col_lse[..., None, :]).mean(dim=-1))
    return torch.cat(confidence, dim=-1)


def attention_with_lse(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``softmax(Q K^T * scale) V`` and the float32 log-sum-exp of each query's scores.

    One fused kernel that never holds the score matrix, the one ``F.scaled_dot_product_attention``
    itself would pick, called directly because only the direct call returns the log-sum-exp:
    flash attention on CPU, and on CUDA flash attention for fp16/bf16, memory-efficient attention
    for fp32.

    Args:
        query: ``(batch, heads, Nq, d)``; key, value: ``(batch, heads, Nk, d)``.
        scale: of the scores; default ``d ** -0.5``.
    Returns:
        ``(output, lse)`` with ``lse`` ``(batch, heads, Nq)``, or None where there is no such kernel
        (another device, or a CUDA kernel refusing these inputs: logged once); the caller then
        takes the blockwise reference path.
    """
    if query.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scale)
    if query.device.type != "cuda":
        return None
    try:
        if query.dtype in (torch.float16, torch.bfloat16):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, scale=scale)[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, None, True, scale=scale
            )[:2]
    except RuntimeError as error:  # e.g. a head size or GPU the kernel does not support
        _warn_refused(f"{query.dtype}: {error}")
        return None
    return out, lse[..., : query.shape[-2]]  # memory-efficient attention pads the query axis of lse


@functools.cache
def _warn_refused(reason: str) -> None:
    """Log a refused kernel once per reason, not once per layer call."""
    logger.warning("fused attention with log-sum-exp unavailable (%s); DSF takes the blockwise path", reason)


def column_lse(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` over the queries of ``S = Q K^T / sqrt(d)``: the column softmax's normaliser.

    That is the row log-sum-exp of ``K Q^T / sqrt(d)``, so one fused attention call with the roles
    of query and key swapped computes it (its output, attention over the queries, is discarded).
    In the inputs' own dtype: every fused kernel accumulates the scores and their log-sum-exp in
    float32 (fp16/bf16 products are exact in float32), so on a GPU rendering in fp16 this is one
    flash-attention call, as precise as the value mapping's own row log-sum-exp.

    Args:
        query: ``(batch, heads, Nq, d)``; key: ``(batch, heads, Nk, d)``.
    Returns:
        float32 ``(batch, heads, Nk)``; None where :func:`attention_with_lse` has no kernel.
    """
    fused = attention_with_lse(key, query, query, scale=query.shape[-1] ** -0.5)
    return None if fused is None else fused[1]


#: Channels that carry ``-c_k`` into :func:`confidence_from_lse`'s scores: a float32 value split
#: into parts that each fit the inputs' dtype (fp16/bf16 hold 11/8 significant bits; three parts
#: keep 24 or more, float32's precision, and the kernel adds them in float32).
COLUMN_PARTS = 3


def confidence_from_lse(
    query: torch.Tensor, key: torch.Tensor, row_lse: torch.Tensor, col_lse: torch.Tensor
) -> torch.Tensor | None:
    """The same per-query confidence as :func:`dual_softmax_confidence`, from one fused kernel call.

    With ``S = Q K^T / sqrt(d)``, ``r_q = logsumexp_k S_qk`` and ``c_k = logsumexp_q S_qk``, Eq. 3's
    entry is ``C_qk = exp(S_qk - r_q) exp(S_qk - c_k)``, so

        ``mean_k C_qk = exp(logsumexp_k(2 S_qk - c_k) - r_q) / Nk``,

    and ``logsumexp_k(2 S_qk - c_k)`` is the log-sum-exp of one attention call with the scale
    doubled, whose query gains constant channels 1 and whose key gains channels holding
    ``-c_k sqrt(d) / 2`` (zero-padded to a multiple of 8 channels, which the kernels prefer): the
    scores become exactly ``2 S_qk - c_k``. (An additive bias tensor does the same but costs the CPU
    kernel 15% more, and the flash kernels take none.)

    The call runs in the inputs' own dtype, so a GPU rendering in fp16 stays on flash attention
    (float32 inputs would take a kernel several times slower there). Precision is float32's all
    the same: the key is not rescaled (the scale carries the factor 2), ``-c_k sqrt(d) / 2`` is
    split over :data:`COLUMN_PARTS` channels that add up to its float32 value, and the kernels
    accumulate scores and log-sum-exps in float32. Every exponent is at most 0
    (``S_qk <= r_q, c_k``) and the last step is a difference of two float32 log-sum-exps.

    Args:
        query: ``(batch, heads, Nq, d)``; key: ``(batch, heads, Nk, d)``;
        row_lse: ``(batch, heads, Nq)``; col_lse: ``(batch, heads, Nk)``.
    Returns:
        float32 ``(batch, heads, Nq)``; None where :func:`attention_with_lse` has no kernel.
    """
    head_dim = query.shape[-1]
    width = -(-(head_dim + COLUMN_PARTS) // 8) * 8
    padded_query = query.new_zeros(*query.shape[:-1], width)
    padded_query[..., :head_dim] = query
    padded_query[..., head_dim : head_dim + COLUMN_PARTS] = 1.0
    padded_key = key.new_zeros(*key.shape[:-1], width)
    padded_key[..., :head_dim] = key
    rest = col_lse.float() * (-math.sqrt(head_dim) / 2)
    for part in range(head_dim, head_dim + COLUMN_PARTS):
        padded_key[..., part] = rest
        rest = rest - padded_key[..., part].float()  # what this dtype could not hold goes to the next part
    fused = attention_with_lse(padded_query, padded_key, padded_key, scale=2 * head_dim**-0.5)
    if fused is None:
        return None
    return torch.exp(fused[1] - row_lse.float() - math.log(key.shape[-2]))


def frame_confidence(
    query: torch.Tensor, ref_key: torch.Tensor, row_lse: torch.Tensor | None, max_elements: int = DSF_CHUNK_ELEMENTS
) -> torch.Tensor:
    """Every frame's per-query confidence against the reference frame, float32 ``(groups, frames, heads, tokens)``.

    From the fused kernels, in the inputs' dtype, when the value mapping's row log-sum-exp
    ``row_lse`` (same shape) is given and the device has them; else from the blockwise reference,
    whose score blocks hold at most ``max_elements``.

    Args:
        query: ``(groups, frames, heads, tokens, d)``; ref_key: ``(groups, heads, ref_tokens, d)``.
    """
    groups, frames = query.shape[:2]
    if row_lse is not None:
        # per frame: (groups * frames, heads, tokens, d), each frame against the reference
        frame_query = query.flatten(0, 1)
        frame_ref_key = ref_key[:, None].expand(groups, frames, *ref_key.shape[1:]).flatten(0, 1)
        col_lse = column_lse(frame_query, frame_ref_key)
        if col_lse is not None:
            confidence = confidence_from_lse(frame_query, frame_ref_key, row_lse.flatten(0, 1), col_lse)
            if confidence is not None:
                return confidence.view(*query.shape[:-1])
    return dual_softmax_confidence(query, ref_key[:, None], max_elements)


def quantile(values: torch.Tensor, q: float, selection: bool | None = None) -> torch.Tensor:
    """The ``q``-quantile of all elements of ``values``, for any number of elements.

    Same definition as ``torch.quantile(values.flatten(), q)`` with its default ``"linear"``
    interpolation: with the values sorted ascending as ``v_0..v_{n-1}`` and ``p = q (n - 1)``, the
    result is ``v_floor(p) + (p - floor(p)) (v_floor(p)+1 - v_floor(p))``; the position is computed
    in Python's double precision, so it stays exact for any n. ``torch.quantile`` refuses inputs of
    more than 2**24 elements.

    Only the two order statistics around ``p`` are needed. On CPU they come from ``torch.topk`` of
    the shorter end (a selection: 9.8 ms for 2**19 random float32 values on this project's CPU,
    against 58 ms for a full sort, and no slow input order), not ``torch.kthvalue``, whose selection
    degrades quadratically on reverse-ordered input (17 s for 2**19 values, measured). Elsewhere one
    ``torch.sort`` (until a selection is measured to be faster there). ``selection`` overrides that
    choice (True: ``topk``, False: the sort), for benchmarks that time both on one device.

    Raises:
        ValueError: for an empty tensor or ``q`` outside [0, 1].
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q!r}")
    flat = values.reshape(-1)
    count = flat.numel()
    if count == 0:
        raise ValueError("the quantile of an empty tensor is undefined")
    position = q * (count - 1)
    below = math.floor(position)
    above = min(below + 1, count - 1)
    weight = position - below
    if selection is None:
        selection = flat.device.type == "cpu"
    if not selection:
        ordered = flat.sort().values
        low, high = ordered[below], ordered[above]
    elif above + 1 <= count - below:  # the two lie among the smallest above + 1 values
        smallest = flat.topk(above + 1, largest=False).values  # ascending
        low, high = smallest[below], smallest[above]
    else:  # ... or among the largest count - below values
        largest = flat.topk(count - below, largest=True).values  # descending: v_{n-1} first
        low, high = largest[count - 1 - below], largest[count - 1 - above]
    if weight == 0.0:
        return low
    return torch.lerp(low, high, weight)


def confidence_mask(confidence: torch.Tensor, q: float) -> torch.Tensor:
    """``M = 1(confidence > phi)``, ``phi`` the ``q``-quantile of all of ``confidence`` (Eq. 4).

    Strictly greater, as in the paper: at least the least confident query fails (q = 0 masks out
    only the minimum), and ties at the threshold keep their own attention.
    """
    return confidence > quantile(confidence, q)


def own_attention_where(
    mask: torch.Tensor, mapped: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """``where(mask, mapped, Attention(Q_f, K_f, V_f))``, the own attention computed only where used.

    Eq. 4's second branch is needed only for the queries the mask sends back to their own frame
    (about ``phi`` of them), so only those are gathered and attend to their frame's key and value:
    per (group, frame, head) the masked-out queries come first in a stable order, padded to the
    largest count among the slices with masked-in queries (whose result is discarded). The cost is
    that count over the tokens times one full attention, never more. Reading the count is one sync
    with the device per call.

    Inside a compiled graph (``torch.compile``) that count would be a data-dependent shape, so
    there every query's own attention is computed (one full attention call, static shapes) and the
    mask selects: the same result, at the cost of the queries the mask keeps. (On CPU the processor
    calls this inside a custom operator, :func:`direct2v.render.attention.cpu_own_attention_where`, which
    compiled graphs run eagerly: gathered there too.)

    Args:
        mask: bool ``(..., Nq)``, True where the value mapping is kept.
        mapped: the value mapping ``(..., Nq, d)``; query: ``(..., Nq, d)``; key, value: ``(..., Nk, d)``.
    Returns:
        ``(..., Nq, d)``, a new tensor.
    """
    lead, head_dim = query.shape[:-2], query.shape[-1]
    keys, values = (x.reshape(-1, 1, x.shape[-2], head_dim) for x in (key, value))
    if torch.compiler.is_compiling():
        own = F.scaled_dot_product_attention(query.reshape(-1, 1, query.shape[-2], head_dim), keys, values)
        return torch.where(mask[..., None], mapped, own.view_as(mapped))
    width = int((~mask).sum(dim=-1).max())
    if width == 0:
        return mapped.clone()
    order = torch.sort(mask.to(torch.uint8), dim=-1, stable=True).indices[..., :width]  # masked-out first
    index = order[..., None].expand(*order.shape, query.shape[-1])
    gathered = query.gather(-2, index).reshape(-1, 1, width, head_dim)
    own = F.scaled_dot_product_attention(gathered, keys, values).view(*lead, width, head_dim)
    kept = mask.gather(-1, order)[..., None]  # True on the padding
    return mapped.scatter(-2, index, torch.where(kept, mapped.gather(-2, index), own))
