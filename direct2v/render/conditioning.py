"""TextConditioning: what the UNet is conditioned on, one row per frame, for every architecture.

SD 1.x/2.x condition on the text encoder's hidden states alone; SDXL adds, per frame, the second
encoder's pooled embedding and the size/crop "time ids" (``added_cond_kwargs``). The pipeline slices,
concatenates (classifier-free guidance's [negative, positive] batch) and passes them as one value,
so no denoising step needs to know which architecture it runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextConditioning:
    """Per-frame UNet conditioning.

    Attributes:
        hidden: ``(frames, tokens, dim)``, the UNet's ``encoder_hidden_states``.
        pooled: SDXL's ``(frames, projection_dim)`` pooled text embedding (``text_embeds``), else None.
        time_ids: SDXL's ``(frames, 6)`` original size, crop corner and target size, else None.
    """

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def __post_init__(self):
        if (self.pooled is None) != (self.time_ids is None):
            raise ValueError("SDXL conditioning needs both the pooled text embedding and the time ids")
        for extra in (self.pooled, self.time_ids):
            if extra is not None and len(extra) != len(self.hidden):
                raise ValueError(f"conditioning rows disagree: {len(self.hidden)} hidden, {len(extra)} added")

    def __len__(self) -> int:
        return len(self.hidden)

    @property
    def dtype(self) -> torch.dtype:
        return self.hidden.dtype

    def __getitem__(self, rows: slice | list[int]) -> TextConditioning:
        """The conditioning of some frames (a slice, or row indices in any order, repeats allowed)."""
        parts = (self.hidden, self.pooled, self.time_ids)
        return TextConditioning(*(None if part is None else part[rows] for part in parts))

    @staticmethod
    def cat(parts: list[TextConditioning]) -> TextConditioning:
        """The rows of ``parts`` one after another (all of one architecture)."""
        def joined(name: str) -> torch.Tensor | None:
            tensors = [getattr(part, name) for part in parts]
            return None if tensors[0] is None else torch.cat(tensors)

        return TextConditioning(joined("hidden"), joined("pooled"), joined("time_ids"))

    def unet_kwargs(self) -> dict:
        """The keyword arguments of ``UNet2DConditionModel.forward`` that carry this conditioning."""
        if self.pooled is None:
            return {"encoder_hidden_states": self.hidden}
        return {"encoder_hidden_states": self.hidden,
                "added_cond_kwargs": {"text_embeds": self.pooled, "time_ids": self.time_ids}}
