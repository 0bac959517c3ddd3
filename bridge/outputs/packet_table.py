"""Every packet of one batch, preallocated in one buffer and patched in place with numpy.

An output serving S performers sends, per batch of stride F, F x S packets that differ from
their performer's template only in a few fields (the values, the frame number, a time).
:class:`PacketTable` holds all of them: slot ``f * S + s`` is frame ``f`` of the ``s``-th
served performer, one row of ``width`` bytes each (the packet at the row's start, its length
in :attr:`lengths`).  A field is a set of byte positions per slot; writing a field for a
batch is one fancy-indexed numpy assignment over every slot at once, so the cost per packet
is a few array elements rather than Python objects and calls.  Pure: no sockets, no clocks.
Transports send slots straight from :attr:`data` (``sendmmsg`` over prebuilt headers, or a
view per slot).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np

#: Row width is a multiple of this, so every packet starts 8-byte aligned.
_ALIGN = 8
_generations = itertools.count(1)


class PacketTable:
    """``frames`` x ``len(templates)`` packets; ``fields`` names the bytes patched per frame.

    ``fields`` maps a name to ``(offsets, width)``: ``offsets[s]`` the byte offsets (within
    the packet) of the field's ``k`` elements in performer ``s``'s packet, each ``width``
    bytes (e.g. 52 float32 values: ``k = 52``, ``width = 4``).  Every performer's packet has
    the same fields with the same ``k``; where they lie may differ (subjects differ in length).
    """

    def __init__(self, templates: Sequence[bytes], frames: int,
                 fields: Mapping[str, tuple[np.ndarray, int]]) -> None:  # fmt: skip
        self.performers = len(templates)
        self.frames = frames
        slots = frames * self.performers
        self.width = -(-max(len(t) for t in templates) // _ALIGN) * _ALIGN
        self.data = np.zeros((slots, self.width), dtype=np.uint8)
        self._flat = self.data.reshape(-1)
        sizes = [len(t) for t in templates]
        self.lengths = np.array(sizes * frames, dtype=np.intp)  #: each slot's packet length
        for slot, (template, size) in enumerate(zip(templates * frames, sizes * frames, strict=True)):
            self.data[slot, :size] = np.frombuffer(template, dtype=np.uint8)
        base = np.arange(slots, dtype=np.intp) * self.width
        #: name -> ``[slots, k * width]`` absolute byte positions in :attr:`data`
        self._index: dict[str, np.ndarray] = {}
        for name, (offsets, width) in fields.items():
            offsets = np.asarray(offsets, dtype=np.intp).reshape(self.performers, -1)
            per_slot = np.tile(offsets, (frames, 1))  # [slots, k]
            pos = base[:, None, None] + per_slot[:, :, None] + np.arange(width, dtype=np.intp)
            self._index[name] = pos.reshape(slots, -1)
        #: changes whenever a table is made, so a transport's headers over an old one are rebuilt
        self.generation = next(_generations)
        self._views: list[memoryview] | None = None

    @property
    def slots(self) -> int:
        return self.data.shape[0]

    def index(self, name: str, order: np.ndarray) -> np.ndarray:
        """Byte positions of field ``name`` in the slots ``order`` (``[len(order), k * width]``):
        gather once per routing, then :meth:`write` with it every batch."""
        return self._index[name][order]

    def write(self, index: np.ndarray, src: np.ndarray) -> None:
        """Write ``src`` (any dtype; its bytes, shaped ``[len(order), k * width]`` once viewed
        as bytes) at ``index`` (from :meth:`index`)."""
        self._flat[index] = np.ascontiguousarray(src).view(np.uint8).reshape(index.shape)

    def views(self) -> list[memoryview]:
        """One memoryview per slot over its packet (made once), for senders without ``sendmmsg``."""
        if self._views is None:
            self._views = [memoryview(self.data[k, :n]) for k, n in enumerate(self.lengths.tolist())]
        return self._views

    def packet(self, slot: int) -> bytes:
        """A copy of one packet (tests, debugging)."""
        return self.data[slot, : self.lengths[slot]].tobytes()
