"""Live Link Face UDP packets (version 6), as Unreal's Apple ARKit Face Support reads them.

Layout (all big-endian; see docs/wire-formats.md)::

    uint8 version=6 | int32 len, device id UTF-8 | int32 len, subject UTF-8
    | int32 frame | float32 sub-frame | int32 fps num | int32 fps den | uint8 count=61
    | 61 x float32 (52 blendshapes in Epic order, then 9 head / eye values)

Everything but the frame time and the 61 floats is fixed per output, so the packet is
built once and only those regions are patched per frame.

Frame time (``timecode``): ``stream`` sends the frame's number on the audio clock (0, 1, 2,
...; sub-frame 0); ``system`` sends the time of day its audio was captured at 30 fps, as
the phone app does: frame = frames since local midnight, sub-frame = the fraction.  Unreal
turns (frame, sub-frame, rate) into the Live Link frame's scene time, which Take Recorder
records and a Live Link timecode provider follows (docs/wire-formats.md).

The device id defaults to a 36-character UUID like the phone app's (:func:`default_device_id`):
Unreal takes any id, but receivers written against the app read a fixed 36-byte id
(PyLiveLinkFace) or accept only packets of the app's exact size (one VRCFaceTracking release).
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from pathlib import Path

import numpy as np

from bridge.blendshapes import LIVELINK_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.clock import WallClock, format_time_of_day, wall_clock
from bridge.frame import FPS, FaceFrame
from bridge.outputs.base import inverse_permutation, wrap_int32

PACKET_VERSION = 6
VALUE_COUNT = len(LIVELINK_NAMES)  # 61
_HEAD = VALUE_COUNT - NUM_BLENDSHAPES  # 9
#: Bytes of a packet besides the two strings: 1 + 4 + 4 + 4 + 4 + 4 + 4 + 1 + 61 * 4.
FIXED_SIZE = 270

_FRAME = struct.Struct(">i")
_FRAME_TIME = struct.Struct(">if")  # frame, sub-frame
#: A frame's audio starts one frame before its capture time (that of its last sample).
FRAME_S = 1.0 / FPS
TIMECODES = ("stream", "system")
_TAIL = struct.Struct(">ifiiB")  # frame, sub-frame, fps num, fps den, value count

#: Length of the phone app's device id, a UUID string ``8-4-4-4-12``.
APP_DEVICE_ID_LENGTH = 36
#: uuid5 namespace of the bridge's derived device ids (itself uuid5 of a fixed name).
DEVICE_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "device-id.livelink.a2e-bridge")
_MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")

log = logging.getLogger(__name__)


def machine_key() -> str:
    """A string that stays the same on this machine across runs and reboots.

    systemd's machine id where there is one; else the MAC address that ``uuid.getnode``
    finds (Windows, macOS), unless it had to make one up (multicast bit set: random per
    run); else the host name.  It is only ever used hashed (:func:`default_device_id`),
    never sent, as machine-id(5) asks.
    """
    for name in _MACHINE_ID_FILES:
        try:
            text = Path(name).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if text and text != "uninitialized":
            return "machine-id:" + text
    node = uuid.getnode()
    if not (node >> 40) & 1:
        return f"mac:{node:012x}"
    return "host:" + socket.gethostname()


def default_device_id(subject: str, machine: str | None = None) -> str:
    """The device id the bridge sends when none is configured: a 36-character UUID
    (upper case, as iOS writes UUIDs), derived from this machine and ``subject``.

    Derived, not random: Unreal keys a Live Link subject by its device id, so the same id
    on every start keeps the subject (and whatever is bound to it) across restarts, while
    two subjects, or two machines, get different ids.
    """
    key = machine_key() if machine is None else machine
    return str(uuid.uuid5(DEVICE_ID_NAMESPACE, f"{key}\n{subject}")).upper()


def packet_size(subject: str, device_id: str) -> int:
    """Size in bytes of every packet for this subject / device id."""
    return FIXED_SIZE + len(device_id.encode()) + len(subject.encode())


class LiveLinkEncoder:
    """FaceFrame -> one Live Link Face v6 packet.

    ``encode`` returns a fresh ``bytes``; ``encode_view`` returns a ``memoryview`` of the
    internal buffer, valid until the next call (what :class:`~bridge.outputs.base.Output`
    uses: the kernel copies on ``sendto``).  ``frame.subject`` is ignored: the subject is
    fixed per encoder because Live Link replaces a device's subject when its name changes (an
    output serving several performers holds one encoder, one subject and device id, for each).
    ``mirror`` swaps every Left/Right value, eye rotations included (UE's mirror option).

    ``prefix`` is placed before the packet in the same buffer; :class:`ZmqEncoder` uses it
    for its topic so the ZeroMQ message is patched in place too.

    ``device_id`` None means :func:`default_device_id` (a UUID for this machine and subject);
    a configured id is sent as given, with a warning when receivers built for the app
    cannot read it (not 36 bytes).

    ``timecode = "system"`` stamps each frame with the local time of day of its first
    audio sample (its ``capture_time``, that of its last sample, minus one frame: the
    instant the stream mode's ``number / 30`` also means), through ``clock`` (default the
    process's :func:`~bridge.clock.wall_clock`): no clock is read per frame, the stamp is a
    function of the frame's own capture time.  ``first_stamp`` / ``last_stamp`` are the Unix
    times of the first and last frames stamped so (for ``--stats``).
    """

    def __init__(
        self, subject: str, device_id: str | None = None, mirror: bool = False, *, prefix: bytes = b"",
        timecode: str = "stream", clock: WallClock | None = None,
    ) -> None:  # fmt: skip
        if timecode not in TIMECODES:
            raise ValueError(f"timecode {timecode!r}: allowed {', '.join(TIMECODES)}")
        self.timecode = timecode
        self.clock = (clock or wall_clock()) if timecode == "system" else None
        self.first_stamp: float | None = None
        self.last_stamp: float | None = None
        if device_id is None:
            device_id = default_device_id(subject)
        elif len(device_id.encode()) != APP_DEVICE_ID_LENGTH:
            log.warning(
                "livelink device_id %r is %d bytes, the phone app's is a 36-character UUID: Unreal "
                "reads it, PyLiveLinkFace and VRCFaceTracking's Live Link module may not; "
                "leave device_id unset for a UUID",
                device_id, len(device_id.encode()),
            )  # fmt: skip
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
        """Patch frame time and values into the buffer; return a view of it."""
        clock = self.clock
        if clock is None:
            _FRAME.pack_into(self._buf, self._frame_at, wrap_int32(frame.number))
        else:
            start = frame.capture_time - FRAME_S
            number, sub = clock.time_of_day_frames(start, FPS)
            _FRAME_TIME.pack_into(self._buf, self._frame_at, number, sub)
            self.last_stamp = clock.monotonic_to_unix(start)
            if self.first_stamp is None:
                self.first_stamp = self.last_stamp
        self._shapes[self._shape_dst] = frame.values
        self._head[self._head_dst] = frame.head
        return self._view

    def encode(self, frame: FaceFrame) -> bytes:
        """Like :meth:`encode_view`, as an independent ``bytes`` copy."""
        return bytes(self.encode_view(frame))

    def layout(self) -> tuple[bytes, dict[str, tuple[np.ndarray, int]]]:
        """The packet and where its per-frame fields lie, for a batch encoder that patches
        many packets at once (:class:`~bridge.outputs.packet_table.PacketTable` fields):
        ``values`` (value ``k`` of Epic's 52, mirror folded in), ``head`` (9), ``frame`` and
        ``subframe``, each element 4 bytes."""
        values_at = self._frame_at + _TAIL.size
        every = np.arange(VALUE_COUNT, dtype=np.intp)
        shapes = every[:NUM_BLENDSHAPES][self._shape_dst]
        head = every[:_HEAD][self._head_dst] + NUM_BLENDSHAPES
        fields = {
            "values": (values_at + 4 * shapes, 4),
            "head": (values_at + 4 * head, 4),
            "frame": (np.array([self._frame_at]), 4),
            "subframe": (np.array([self._frame_at + 4]), 4),
        }
        return bytes(self._buf), fields


def timecode_summary(encoders: list[LiveLinkEncoder]) -> dict[str, object] | None:
    """What ``--stats`` records of the system timecode sent: the first and last frames' time
    of day (30 fps, ``HH:MM:SS:FF.fff``) and Unix time, over ``encoders`` that use it."""
    stamped = [e for e in encoders if e.clock is not None and e.first_stamp is not None]
    if not stamped:
        return None
    first = min(e.first_stamp for e in stamped if e.first_stamp is not None)
    last = max(e.last_stamp for e in stamped if e.last_stamp is not None)
    clock = stamped[0].clock
    assert clock is not None
    return {
        "mode": "system",
        "fps": FPS,
        "first_frame": format_time_of_day(clock.seconds_of_day(first), FPS),
        "last_frame": format_time_of_day(clock.seconds_of_day(last), FPS),
        "first_frame_unix": round(first, 6),
        "last_frame_unix": round(last, 6),
        "unix_minus_monotonic_s": round(clock.offset, 6),
    }


def timecode_stats(outputs: list[object]) -> dict[str, object]:
    """``{"timecode": ...}`` for ``--stats`` when some Live Link output sends system timecode."""
    encoders = [e for o in outputs for e in getattr(o, "encoders", {}).values()
                if isinstance(e, LiveLinkEncoder)]  # fmt: skip
    summary = timecode_summary(encoders)
    return {"timecode": summary} if summary else {}
