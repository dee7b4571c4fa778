"""Rotational value mapping and dual-softmax filtering as diffusers attention processors.

``RotationalValueMappingProcessor`` is installed on UNet attention layers with
``unet.set_attn_processor``. In self-attention it lets every frame attend, with its own queries, to
the keys and values of one reference frame (paper Eq. 2); cross-attention (to the text) is left as
plain scaled-dot-product attention. Which frame is the reference is read, at every call, from a
shared :class:`FrameReference` that the pipeline updates once per denoising step, so no layer needs
to know about the schedule. ``DualSoftmaxFilterProcessor`` adds the paper's dual-softmax filtering
(Eq. 3-4): queries whose match in the reference frame is unreliable keep their own frame's attention.

Chunked rendering (videos longer than one UNet batch) adds an anchor cache: while the anchor frames
are denoised, each layer stores the anchors' key/value at the (step, anchor) pairs a later section
will use as its reference; while a section is denoised, a reference index below the number of
anchors is read from that cache instead of from the batch. That state (``FrameReference``,
``AnchorKVCache``) lives in :mod:`direct2v.render.reference`, the dual-softmax math in :mod:`direct2v.render.dsf`;
here are the processors that use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from direct2v.render import model_dir
from direct2v.render.cpu_kernels import dual_softmax_attention, masked_own_attention, on_cpu_outside_autograd
from direct2v.render.dsf import (
    DSF_CHUNK_ELEMENTS,
    attention_with_lse,
    confidence_mask,
    frame_confidence,
    own_attention_where,
    query_rows_per_block,
)
from direct2v.render.reference import FrameReference

# --- the processors ------------------------------------------------------------------------------


def fold_frames(query: torch.Tensor) -> torch.Tensor:
    """``(groups, frames, heads, tokens, d)`` -> ``(groups, heads, frames * tokens, d)``: every frame's
    queries as one long sequence per group and head, for keys all frames share (the reference's)."""
    groups, frames, heads, tokens, head_dim = query.shape
    return query.permute(0, 2, 1, 3, 4).reshape(groups, heads, frames * tokens, head_dim)


def unfold_frames(folded: torch.Tensor, frames: int) -> torch.Tensor:
    """The inverse of :func:`fold_frames` (a view)."""
    groups, heads, length, head_dim = folded.shape
    return folded.view(groups, heads, frames, length // frames, head_dim).permute(0, 2, 1, 3, 4)


class RotationalValueMappingProcessor:
    """Self-attention of every frame against the key/value of the reference frame (paper Eq. 2).

    Same call signature as diffusers' ``AttnProcessor2_0``. The batch is read as ``cfg_groups``
    groups of F frames each; within a group, frame f's queries attend to the keys and values of
    frame ``state.index``. Since all frames share those keys, their queries are folded into one long
    query sequence per group and head, and a single ``F.scaled_dot_product_attention`` call does
    the work: no key/value copies per frame, no N x N matrix.

    Subclasses (dual-softmax filtering) extend :meth:`self_attention`, which receives the per-frame
    query/key/value and can combine :meth:`value_mapping` with each frame's own attention.
    """

    def __init__(self, state: FrameReference, layer: str = ""):
        self.state = state
        self.layer = layer  # the module name: the anchor cache's layer key

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        is_self_attention = encoder_hidden_states is None
        if is_self_attention and attention_mask is not None:
            raise ValueError("rotational value mapping does not support an attention mask in self-attention")

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        context = hidden_states if is_self_attention else encoder_hidden_states
        if not is_self_attention and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)

        heads = attn.heads
        batch_size = query.shape[0]
        head_dim = key.shape[-1] // heads
        # (batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)
        query, key, value = (x.view(batch_size, -1, heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if is_self_attention:
            out = self._frame_attention(query, key, value)
        else:
            if attention_mask is not None:
                attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[2], batch_size)
                attention_mask = attention_mask.view(batch_size, heads, -1, attention_mask.shape[-1])
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)

        out = out.transpose(1, 2).reshape(batch_size, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _frame_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Split the batch into (cfg group, frame), run :meth:`self_attention`, merge back."""
        groups = self.state.cfg_groups
        batch_size, heads, tokens, head_dim = query.shape
        if groups < 1 or batch_size % groups:
            raise ValueError(f"a batch of {batch_size} cannot be split into {groups} classifier-free-guidance groups")
        frames = batch_size // groups
        query, key, value = (x.reshape(groups, frames, heads, -1, head_dim) for x in (query, key, value))
        out = self.self_attention(query, key, value)
        return out.reshape(batch_size, heads, tokens, head_dim)

    def self_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Self-attention of a video batch; the seam for dual-softmax filtering.

        Args:
            query, key, value: ``(groups, frames, heads, tokens, head_dim)``.
        Returns:
            ``(groups, frames, heads, tokens, head_dim)``: here the value mapping of every frame.
        """
        ref_key, ref_value = self.reference_key_value(key, value)
        return self.value_mapping(query, ref_key, ref_value)

    def reference_key_value(self, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference frame's key and value, ``(groups, heads, tokens, head_dim)`` each.

        Records the anchors' key/value first when the anchor pass of a chunked render asks for it;
        during a section, a reference among the anchors comes from the cache. Which frame is read
        from the state's tensors, so the same graph serves every step (the cached and the batch
        candidate are both one frame: selecting with ``torch.where`` costs no more than a branch).
        """
        state = self.state
        if not torch.compiler.is_compiling():  # a clear error in eager; compiled, the pipeline's schedule is trusted
            state.check_reference(key.shape[1])
        if state.record_to is not None:
            state.record_to.record(self.layer, key, value, state.record_slots)
        own_key, own_value = key.index_select(1, state.batch_index)[:, 0], value.index_select(1, state.batch_index)[:, 0]
        if state.anchors is None:
            return own_key, own_value
        cached_key, cached_value = state.anchors.load(self.layer, state.slot)
        return torch.where(state.from_cache, cached_key, own_key), torch.where(state.from_cache, cached_value, own_value)

    @staticmethod
    def value_mapping(query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor) -> torch.Tensor:
        """``softmax(Q_f K_r^T / sqrt(d)) V_r`` for every frame f at once.

        Args:
            query: ``(groups, frames, heads, tokens, head_dim)``.
            ref_key, ref_value: the reference frame's, ``(groups, heads, ref_tokens, head_dim)``.
        Returns:
            ``(groups, frames, heads, tokens, head_dim)``.
        """
        out = F.scaled_dot_product_attention(fold_frames(query), ref_key, ref_value)
        return unfold_frames(out, query.shape[1])


class DualSoftmaxFilterProcessor(RotationalValueMappingProcessor):
    """Rotational value mapping with dual-softmax filtering (paper Eq. 3-4).

    Output for frame f: ``M_f * VM_f + (1 - M_f) * Attention(Q_f, K_f, V_f)``, where ``M_f`` is 1 for
    the queries (per head, broadcast over the head's channels) whose dual-softmax confidence against
    the reference frame is above ``phi``, and ``phi`` is the ``quantile`` of the confidences.

    Quantile scope: one threshold per layer call, over every confidence the call computes: all
    classifier-free-guidance groups, all frames of the UNet batch (the reference frame included,
    when it is in the batch), all heads and all queries. That is the public code's scope. In a
    chunked section the cached anchors are not in the batch, so the pool is the section's frames.
    Interpolation: linear, as ``torch.quantile``'s default (see :func:`direct2v.render.dsf.quantile`).

    A one-frame batch that is its own reference skips the filter: both branches are the same
    attention there, so the output would not change.

    Cost. On CPU (float32, eager or compiled) our one-pass kernel
    (:func:`direct2v.render.cpu_kernels.dual_softmax_attention`) computes the value mapping and every
    confidence taking each exponential once: about 1.5x plain RVM's attention call. Elsewhere, or
    where it cannot be built or hands a call back (scores whose range could cost it precision),
    PyTorch's fused kernels: three attention-sized calls where plain RVM makes one, all in the
    model's dtype (flash attention for fp16 on a GPU) — the value mapping (which also yields each
    query's row log-sum-exp), the column log-sum-exp, the confidence sum (see
    :func:`direct2v.render.dsf.confidence_from_lse`); exact Eq. 3 needs the column normaliser over ALL
    queries before any confidence can be summed, and those kernels reduce over keys only. Either
    way, plus the own attention of the masked-out queries only (about ``phi`` of them: on CPU our
    kernel's :func:`direct2v.render.cpu_kernels.masked_own_attention`, gathered per slice without padding;
    else :func:`direct2v.render.dsf.own_attention_where`, padded to the largest slice's count; every query
    inside a graph compiled for another device, whose shapes cannot depend on the mask) and a
    selection for the quantile. On CPU both steps are custom operators
    (:func:`cpu_mapping_and_confidence`, :func:`cpu_own_attention_where`), so ``torch.compile``
    keeps them as they run eagerly.
    ``max_elements`` bounds the score blocks of the blockwise path that runs on devices without
    fused kernels.
    """

    def __init__(
        self, state: FrameReference, quantile: float = 0.05, layer: str = "", max_elements: int = DSF_CHUNK_ELEMENTS
    ):
        super().__init__(state, layer)
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0.0 <= quantile < 1.0:
            raise ValueError(f"the dual-softmax quantile must be in [0, 1), got {quantile!r}")
        query_rows_per_block(1, 1, max_elements)  # validates max_elements
        self.quantile = float(quantile)
        self.max_elements = max_elements

    def self_attention(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        ref_key, ref_value = self.reference_key_value(key, value)
        if query.shape[1] == 1 and self.state.anchors is None:
            return self.value_mapping(query, ref_key, ref_value)  # the frame is its own reference
        mapped, confidence = self.mapping_and_confidence(query, ref_key, ref_value)
        mask = confidence_mask(confidence, self.quantile)
        if on_cpu_outside_autograd(query, key, value):
            return cpu_own_attention_where(mask, mapped, query, key, value)
        return own_attention_where(mask, mapped, query, key, value)

    def mapping_and_confidence(
        self, query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The value mapping ``(groups, frames, heads, tokens, head_dim)`` and its confidences.

        Our one-pass CPU kernel where it serves; else with fused stock kernels (CPU, CUDA) the value
        mapping's call also returns each query's row log-sum-exp, from which
        :func:`direct2v.render.dsf.frame_confidence` needs two more calls; elsewhere :meth:`value_mapping`
        and the blockwise reference.

        Returns:
            ``(mapped, confidence)``, confidence float32 ``(groups, frames, heads, tokens)``.
        """
        if on_cpu_outside_autograd(query, ref_key, ref_value):
            return cpu_mapping_and_confidence(query, ref_key, ref_value, self.max_elements)
        return stock_mapping_and_confidence(query, ref_key, ref_value, self.max_elements)


def stock_mapping_and_confidence(
    query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor, max_elements: int = DSF_CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`DualSoftmaxFilterProcessor.mapping_and_confidence` on PyTorch's kernels alone: the fused
    value mapping with its row log-sum-exp and two more fused calls for the confidences
    (:func:`direct2v.render.dsf.frame_confidence`), or, on devices without fused kernels, the plain value
    mapping and the blockwise reference, whose score blocks hold at most ``max_elements``."""
    frames = query.shape[1]
    fused = attention_with_lse(fold_frames(query), ref_key, ref_value)
    if fused is None:
        mapped = RotationalValueMappingProcessor.value_mapping(query, ref_key, ref_value)
        return mapped, frame_confidence(query, ref_key, None, max_elements)
    mapped, row_lse = (unfold_frames(x, frames) for x in (fused[0], fused[1][..., None]))
    return mapped, frame_confidence(query, ref_key, row_lse[..., 0], max_elements)


# --- dual-softmax filtering's CPU operators ----------------------------------------------------------
# Each is one custom operator, so that torch.compile takes it as one opaque call: the compiled graph
# then runs our kernels too, and the own attention stays gathered (its width is data-dependent, a
# shape a graph cannot have; traced, it would cost every query's). Eager renders call the same ops.
# They take CPU tensors outside autograd (cpu_kernels.on_cpu_outside_autograd); which kernel runs
# inside them is decided when they run.


@torch.library.custom_op("direct2v::cpu_mapping_and_confidence", mutates_args=(), device_types="cpu")
def cpu_mapping_and_confidence(
    query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor, max_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The value mapping and its confidences on the CPU: our one-pass kernel
    (:func:`direct2v.render.cpu_kernels.dual_softmax_attention`) where it serves, else
    :func:`stock_mapping_and_confidence`. Contiguous outputs, as the fake implementation promises."""
    single_pass = dual_softmax_attention(query, ref_key, ref_value)
    if single_pass is None:
        single_pass = stock_mapping_and_confidence(query, ref_key, ref_value, max_elements)
    return tuple(x.contiguous() for x in single_pass)


@cpu_mapping_and_confidence.register_fake
def _(query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor, max_elements: int):
    return query.new_empty(*query.shape[:-1], ref_value.shape[-1]), query.new_empty(query.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("direct2v::cpu_own_attention_where", mutates_args=(), device_types="cpu")
def cpu_own_attention_where(
    mask: torch.Tensor, mapped: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """Eq. 4 on the CPU, the own attention of the masked-out queries only: our kernel
    (:func:`direct2v.render.cpu_kernels.masked_own_attention`, unpadded) where it serves, else
    :func:`direct2v.render.dsf.own_attention_where` (padded to the largest slice's count). Contiguous."""
    own = masked_own_attention(mask, mapped, query, key, value)
    return (own if own is not None else own_attention_where(mask, mapped, query, key, value)).contiguous()


@cpu_own_attention_where.register_fake
def _(mask: torch.Tensor, mapped: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    return torch.empty_like(mapped, memory_format=torch.contiguous_format)


def default_rvm_blocks(unet: UNet2DConditionModel) -> tuple[str, ...]:
    """The up blocks ``rvm_blocks="up"`` means for this UNet (:func:`direct2v.render.model_dir.default_rvm_blocks`)."""
    return model_dir.default_rvm_blocks(unet.config.up_block_types)


def rvm_layer_names(unet: UNet2DConditionModel, blocks: Literal["up", "all"] | Sequence[str]) -> list[str]:
    """The attention processors (by name) that ``blocks`` puts RVM on.

    ``"up"``: the self-attention (attn1) layers of :func:`default_rvm_blocks`; block names (e.g.
    ``("up_blocks.1", "mid_block")``): the self-attention layers inside each; ``"all"``: every
    attention layer (cross-attention passes through unchanged).

    Raises:
        ValueError: an unknown ``blocks``, or a named block without self-attention layers (the
            message lists the blocks that have them).
    """
    names = list(unet.attn_processors)
    if blocks == "all":
        return names
    if blocks == "up":
        blocks = default_rvm_blocks(unet)
    elif isinstance(blocks, str) or not blocks or not all(isinstance(block, str) and block for block in blocks):
        raise ValueError(f"rvm_blocks must be 'up', 'all' or a list of block names, got {blocks!r}")
    self_attention = [name for name in names if ".attn1." in name]
    chosen = []
    for block in blocks:
        inside = [name for name in self_attention if name.startswith(block.rstrip(".") + ".")]
        if not inside:
            having = sorted({name.split(".attentions.")[0] for name in self_attention})
            raise ValueError(f"rvm_blocks: this UNet has no self-attention layers in {block!r}; "
                             f"blocks that have them: {', '.join(having)}")
        chosen += [name for name in inside if name not in chosen]
    return chosen


def install_rvm(
    unet: UNet2DConditionModel,
    blocks: Literal["up", "all"] | Sequence[str],
    state: FrameReference,
    dsf_quantile: float | None = None,
) -> list[str]:
    """Put an RVM processor, reading ``state``, on the attention layers ``blocks`` names (:func:`rvm_layer_names`).

    With the reference pinned to frame 0, ``"all"`` is exactly Text2Video-Zero's cross-frame attention.
    ``dsf_quantile``: None for plain RVM, else dual-softmax filtering with that quantile phi.
    Every other layer gets diffusers' default ``AttnProcessor2_0``. Each chosen layer gets a
    processor of its own, named after the layer (the anchor cache's key). The caller saves
    ``unet.attn_processors`` beforehand if it wants to restore them.

    Returns:
        the names of the layers that got the RVM processor.
    Raises:
        ValueError: for a bad ``blocks`` or quantile.
    """
    chosen = rvm_layer_names(unet, blocks)
    default = AttnProcessor2_0()

    def rvm(name: str) -> RotationalValueMappingProcessor:
        if dsf_quantile is None:
            return RotationalValueMappingProcessor(state, layer=name)
        return DualSoftmaxFilterProcessor(state, quantile=dsf_quantile, layer=name)

    wanted = set(chosen)
    unet.set_attn_processor({name: rvm(name) if name in wanted else default for name in unet.attn_processors})
    return chosen
