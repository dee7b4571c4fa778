"""The per-step state of rotational value mapping: which frame is the reference, and the anchor cache.

The pipeline writes it on the host before every UNet call; every RVM processor
(:mod:`direct2v.render.attention`) reads it. :class:`FrameReference` says which frame of the (virtual)
batch is the reference at this step, as host ints and as small device tensors updated in place, so
that a compiled UNet reads a new step as new data, not as a new graph. :class:`AnchorKVCache` holds,
during a chunked render (videos longer than one UNet batch), the anchor frames' self-attention
key/value at the (step, anchor) pairs a later section will use as its reference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

# --- the anchor cache of chunked rendering ---------------------------------------------------------


class AnchorKVCache:
    """The anchor frames' self-attention key/value, kept only where a later section will read them.

    ``wanted`` is the set of ``(step, anchor)`` pairs some section has as its reference (see
    :func:`direct2v.render.rvm.cached_anchor_steps`); since it does not grow with the number of frames,
    neither does the cache. Each wanted pair has a *slot*; every RVM layer gets one key and one value
    buffer ``(slots + anchors, cfg_groups, heads, tokens, head_dim)`` (both classifier-free-guidance
    groups: a section's unconditional half reads the anchor's unconditional half), allocated at its
    first :meth:`record` with the layer's own shapes. The last ``num_anchors`` slots are scratch: at
    every step of the anchor pass each anchor is written somewhere, its wanted slot or its scratch
    slot, so that recording is one fixed-shape ``index_copy_`` whatever the step (a compiled UNet
    sees the same graph at every step; which slots is data, :meth:`slot_rows`).

    Written during the anchor pass (:meth:`record`), read during the sections (:meth:`load`).
    """

    def __init__(self, wanted: Iterable[tuple[int, int]], num_anchors: int):
        self.wanted = frozenset(wanted)
        self.num_anchors = num_anchors
        bad = sorted(pair for pair in self.wanted if not 0 <= pair[1] < num_anchors)
        if bad:
            raise ValueError(f"wanted (step, anchor) pairs outside the {num_anchors} anchors: {bad[:5]}")
        self.slots = {pair: slot for slot, pair in enumerate(sorted(self.wanted))}
        self._buffers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._rows: dict[torch.device, torch.Tensor] = {}

    def slot(self, step: int, anchor: int) -> int:
        """The slot of a wanted pair; a miss means the schedules of the passes disagree."""
        try:
            return self.slots[step, anchor]
        except KeyError:
            raise RuntimeError(
                f"anchor cache miss: step {step}, anchor {anchor} was not recorded "
                f"(the anchor pass and the section schedules disagree)"
            ) from None

    def slot_rows(self, device: torch.device) -> torch.Tensor:
        """Where the anchor pass writes each anchor at each step: int64 ``(steps + 1, anchors)``.

        Row ``step`` holds, for anchor ``a``, the slot of ``(step, a)`` if it is wanted, else ``a``'s
        scratch slot; the last row (all scratch) serves every step after the last wanted one. Built
        once per device, so a step costs a device-to-device row copy, not a host-to-device transfer.
        """
        if device not in self._rows:
            steps = 1 + max((step for step, _ in self.wanted), default=-1)
            scratch = len(self.slots)
            rows = [[self.slots.get((step, anchor), scratch + anchor) for anchor in range(self.num_anchors)]
                    for step in range(steps + 1)]
            self._rows[device] = torch.tensor(rows, dtype=torch.int64, device=device)
        return self._rows[device]

    def record(self, layer: str, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor) -> None:
        """Write an anchor batch's key/value ``(groups, anchors, heads, tokens, d)``, anchor a to ``slots[a]``.

        The buffers are the cache's own tensors, so the cache never keeps the whole batch's
        key/value alive through a view.
        """
        if key.shape[1] != self.num_anchors:
            raise ValueError(f"the anchor pass must batch exactly the {self.num_anchors} anchors, got {key.shape[1]}")
        if layer not in self._buffers:
            shape = (len(self.slots) + self.num_anchors, key.shape[0], *key.shape[2:])
            self._buffers[layer] = (key.new_zeros(shape), value.new_zeros(shape))
        key_buffer, value_buffer = self._buffers[layer]
        key_buffer.index_copy_(0, slots, key.transpose(0, 1))
        value_buffer.index_copy_(0, slots, value.transpose(0, 1))

    def load(self, layer: str, slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(key, value)`` of cache slot ``slot`` (int64 ``(1,)``), ``(groups, heads, tokens, d)`` each."""
        if layer not in self._buffers:
            raise RuntimeError(f"anchor cache miss: layer {layer!r} recorded nothing during the anchor pass")
        key_buffer, value_buffer = self._buffers[layer]
        return key_buffer.index_select(0, slot)[0], value_buffer.index_select(0, slot)[0]

    def entry(self, layer: str, step: int, anchor: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The recorded ``(key, value)`` of a wanted pair, read on the host (for inspection and tests)."""
        slot = torch.tensor([self.slot(step, anchor)], device=self._buffers[layer][0].device)
        return self.load(layer, slot)

    def check_complete(self) -> None:
        """After the anchor pass: a wanted pair means some RVM layer must have recorded."""
        if self.wanted and not self._buffers:
            raise RuntimeError("the anchor pass recorded nothing: no RVM layer ran during it")

    def __len__(self) -> int:
        """Recorded entries: wanted pairs times recording layers."""
        return len(self.wanted) * len(self._buffers)

    @property
    def nbytes(self) -> int:
        """Bytes held: the key and value buffers of every layer, scratch slots included."""
        return sum(k.nbytes + v.nbytes for k, v in self._buffers.values())


# --- the state the pipeline writes and the processors read ---------------------------------------


@dataclass
class FrameReference:
    """State shared by the pipeline (writer, on the host, before each UNet call) and every RVM processor.

    The host-side fields say what the step is; the tensor fields say the same to the processors.
    A processor reads only tensors and the pass's fixed mode (``record_to`` / ``anchors``), so a
    compiled UNet sees a new reference frame or step as new data in the same graph: no guard on a
    changing Python int, no recompilation. :meth:`point_to` keeps the two in step, with device-side
    writes only (no host-device synchronisation in the step loop).

    Attributes:
        index: the reference frame r, 0-based, in the current (virtual) batch: among the UNet
            batch's frames, or, while a section is rendered, among ``[anchors..., section frames...]``.
        cfg_groups: how many copies of the frame sequence the batch holds: 2 with classifier-free
            guidance (batch = [uncond frames 0..F-1, cond frames 0..F-1]), 1 without.
        step: t' - 1, the 0-based joint step being denoised (the cache's step key).
        record_to: during the anchor pass of a chunked render: where the layers store the anchors'
            key/value.
        anchors: during a section: the cache holding the virtual batch's first ``num_anchors`` frames.
        batch_index: int64 ``(1,)``: the reference's position among the UNet batch's frames (0 when
            it is a cached anchor).
        from_cache: bool ``()``: the reference is a cached anchor (sections only).
        slot: int64 ``(1,)``: that anchor's cache slot.
        record_slots: int64 ``(anchors,)``: where the anchor pass writes each anchor at this step.
    """

    index: int = 0
    cfg_groups: int = 2
    step: int = 0
    record_to: AnchorKVCache | None = None
    anchors: AnchorKVCache | None = None
    device: torch.device | str = "cpu"
    batch_index: torch.Tensor = field(init=False)
    from_cache: torch.Tensor = field(init=False)
    slot: torch.Tensor = field(init=False)
    record_slots: torch.Tensor = field(init=False)

    def __post_init__(self):
        long = {"dtype": torch.int64, "device": self.device}
        self.batch_index, self.slot = torch.zeros(1, **long), torch.zeros(1, **long)
        self.from_cache = torch.zeros((), dtype=torch.bool, device=self.device)
        self.record_slots = torch.zeros(0, **long)
        self.point_to(self.index, self.step)

    def point_to(self, index: int, step: int) -> None:
        """Make ``index`` the reference of joint step ``step`` (set the pass's mode first).

        Writes the tensor fields in place (the same tensor objects every step), on their device.
        """
        self.index, self.step = index, step
        cached = self.anchors.num_anchors if self.anchors is not None else 0
        from_cache = 0 <= index < cached
        self.from_cache.fill_(from_cache)
        self.batch_index.fill_(0 if from_cache else index - cached)
        self.slot.fill_(self.anchors.slot(step, index) if from_cache else 0)
        if self.record_to is not None:
            rows = self.record_to.slot_rows(self.batch_index.device)
            row = rows[min(step, len(rows) - 1)]
            if self.record_slots.shape != row.shape:
                self.record_slots = torch.empty_like(row)  # once per pass: the shape is the anchor count
            self.record_slots.copy_(row)

    def check_reference(self, frames: int) -> None:
        """Raise if ``index`` is outside the virtual batch of a UNet batch of ``frames`` frames."""
        cached = self.anchors.num_anchors if self.anchors is not None else 0
        if not 0 <= self.index - cached < frames and not 0 <= self.index < cached:
            raise IndexError(
                f"reference frame {self.index} is outside the {cached} cached + {frames} frames of this batch"
            )
