"""Live Link Face UDP packets (version 6), as Unreal's Apple ARKit Face Support reads them.

Layout (all big-endian; see docs/wire-formats.md)::

    uint8 version=6 | int32 len, device id UTF-8 | int32 len, subject UTF-8
    | int32 frame | float32 sub-frame | int32 fps num | int32 fps den | uint8 count=61
    | 61 x float32 (52 blendshapes in Epic order, then 9 head / eye values)

Everything but the frame number and the 61 floats is fixed per output, so the packet is
built once and only those two regions are patched per frame.
"""

from __future__ import annotations

import struct

import numpy as np

from bridge.blendshapes import LIVELINK_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.frame import FPS, FaceFrame
from bridge.outputs.base import inverse_permutation, wrap_int32

PACKET_VERSION = 6
VALUE_COUNT = len(LIVELINK_NAMES)  # 61
_HEAD = VALUE_COUNT - NUM_BLENDSHAPES  # 9
#: Bytes of a packet besides the two strings: 1 + 4 + 4 + 4 + 4 + 4 + 4 + 1 + 61 * 4.
FIXED_SIZE = 270

_FRAME = struct.Struct(">i")
_TAIL = struct.Struct(">ifiiB")  # frame, sub-frame, fps num, fps den, value count


def packet_size(subject: str, device_id: str) -> int:
    """Size in bytes of every packet for this subject / device id."""
    return FIXED_SIZE + len(device_id.encode()) + len(subject.encode())


class LiveLinkEncoder:
    """FaceFrame -> one Live Link Face v6 packet.

    ``encode`` returns a fresh ``bytes``; ``encode_view`` returns a ``memoryview`` of the
    internal buffer, valid until the next call (what :class:`~bridge.outputs.base.Output`
    uses: the kernel copies on ``sendto``).  ``frame.subject`` is ignored: the subject is
    fixed per output because Live Link replaces a device's subject when its name changes.
    ``mirror`` swaps every Left/Right value, eye rotations included (UE's mirror option).

    ``prefix`` is placed before the packet in the same buffer; :class:`ZmqEncoder` uses it
    for its topic so the ZeroMQ message is patched in place too.
    """

    def __init__(self, subject: str, device_id: str, mirror: bool = False, *, prefix: bytes = b"") -> None:
        self.subject = subject
        self.device_id = device_id
        self.mirror = mirror
        dev, sub = device_id.encode(), subject.encode()
        head = (
            bytes(prefix)
            + struct.pack(">B", PACKET_VERSION)
            + struct.pack(">i", len(dev))
            + dev
            + struct.pack(">i", len(sub))
            + sub
        )
        self._frame_at = len(head)
        tail = _TAIL.pack(0, 0.0, FPS, 1, VALUE_COUNT) + bytes(4 * VALUE_COUNT)
        self._buf = bytearray(head + tail)
        self._view = memoryview(self._buf)
        values_at = self._frame_at + _TAIL.size
        # A big-endian float32 window onto the packet's 61 values: assigning to it writes
        # the wire bytes directly (numpy byte-swaps during the copy).
        values = np.frombuffer(self._buf, dtype=">f4", count=VALUE_COUNT, offset=values_at)
        self._shapes = values[:NUM_BLENDSHAPES]
        self._head = values[NUM_BLENDSHAPES:]
        if mirror:
            inv = inverse_permutation(mirror_permutation(LIVELINK_NAMES))
            self._shape_dst: slice | np.ndarray = inv[:NUM_BLENDSHAPES]
            self._head_dst: slice | np.ndarray = inv[NUM_BLENDSHAPES:] - NUM_BLENDSHAPES
        else:
            self._shape_dst = self._head_dst = slice(None)
        assert len(self._buf) == len(prefix) + packet_size(subject, device_id)

    @property
    def size(self) -> int:
        """Bytes per encoded message (prefix included)."""
        return len(self._buf)

    def encode_view(self, frame: FaceFrame) -> memoryview:
        """Patch frame number and values into the buffer; return a view of it."""
        _FRAME.pack_into(self._buf, self._frame_at, wrap_int32(frame.number))
        self._shapes[self._shape_dst] = frame.values
        self._head[self._head_dst] = frame.head
        return self._view

    def encode(self, frame: FaceFrame) -> bytes:
        """Like :meth:`encode_view`, as an independent ``bytes`` copy."""
        return bytes(self.encode_view(frame))
