"""Rotational value mapping as a diffusers attention processor.

``RotationalValueMappingProcessor`` is installed on UNet attention layers with
``unet.set_attn_processor``. In self-attention it lets every frame attend, with its own queries, to
the keys and values of one reference frame (paper Eq. 2); cross-attention (to the text) is left as
plain scaled-dot-product attention. Which frame is the reference is read, at every call, from a
shared :class:`FrameReference` that the pipeline updates once per denoising step, so one processor
instance serves every layer and no layer needs to know about the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

#: Self-attention layers the authors put RVM on: the two highest-resolution decoder stages of SD 1.x.
AUTHORS_BLOCKS = ("up_blocks.2.", "up_blocks.3.")


@dataclass
class FrameReference:
    """Mutable state shared by the pipeline (writer) and every RVM processor (readers).

    Attributes:
        index: the reference frame r, 0-based, among the frames of the current UNet batch.
        cfg_groups: how many copies of the frame sequence the batch holds: 2 with classifier-free
            guidance (batch = [uncond frames 0..F-1, cond frames 0..F-1]), 1 without.
    """

    index: int = 0
    cfg_groups: int = 2


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

    def __init__(self, state: FrameReference):
        self.state = state

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
        frames = query.shape[1]
        reference = self.state.index
        if not 0 <= reference < frames:
            raise IndexError(f"reference frame {reference} is outside the {frames} frames of this batch")
        return self.value_mapping(query, key[:, reference], value[:, reference])

    @staticmethod
    def value_mapping(query: torch.Tensor, ref_key: torch.Tensor, ref_value: torch.Tensor) -> torch.Tensor:
        """``softmax(Q_f K_r^T / sqrt(d)) V_r`` for every frame f at once.

        Args:
            query: ``(groups, frames, heads, tokens, head_dim)``.
            ref_key, ref_value: the reference frame's, ``(groups, heads, ref_tokens, head_dim)``.
        Returns:
            ``(groups, frames, heads, tokens, head_dim)``.
        """
        groups, frames, heads, tokens, head_dim = query.shape
        folded = query.permute(0, 2, 1, 3, 4).reshape(groups, heads, frames * tokens, head_dim)
        out = F.scaled_dot_product_attention(folded, ref_key, ref_value)
        return out.view(groups, heads, frames, tokens, head_dim).permute(0, 2, 1, 3, 4)


def install_rvm(unet: UNet2DConditionModel, blocks: Literal["up", "all"], state: FrameReference) -> None:
    """Put one RVM processor, reading ``state``, on the chosen attention layers of ``unet``.

    ``"up"``: the self-attention (attn1) layers of up_blocks.2 and up_blocks.3, as the authors did.
    ``"all"``: every attention layer (cross-attention passes through unchanged), which with the
    reference pinned to frame 0 is exactly Text2Video-Zero's cross-frame attention.
    Every other layer gets diffusers' default ``AttnProcessor2_0``. The caller saves
    ``unet.attn_processors`` beforehand if it wants to restore them.

    Raises:
        ValueError: for an unknown ``blocks`` or a UNet without the layers it names.
    """
    if blocks not in ("up", "all"):
        raise ValueError(f"blocks must be 'up' or 'all', got {blocks!r}")
    rvm = RotationalValueMappingProcessor(state)
    default = AttnProcessor2_0()

    def wanted(name: str) -> bool:
        return blocks == "all" or (name.startswith(AUTHORS_BLOCKS) and ".attn1." in name)

    processors = {name: rvm if wanted(name) else default for name in unet.attn_processors}
    if not any(processor is rvm for processor in processors.values()):
        raise ValueError(f"this UNet has no attention layers for rvm_blocks={blocks!r} (looked for {AUTHORS_BLOCKS})")
    unet.set_attn_processor(processors)
