"""OSC bundles: ``arkit`` (one address per blendshape) and ``vmc`` (VMC protocol).

The ``vmc`` bundle is what VSeeFace, VNyan and Warudo read from a performer app: the 52
``/VMC/Ext/Blend/Val`` clips, ``/VMC/Ext/OK 1`` (a model is loaded and tracking),
``/VMC/Ext/T`` (the sender's time in seconds: the frame's stream time) and last
``/VMC/Ext/Blend/Apply``.

The bundle is built once with python-osc's builders (so its framing is python-osc's, not
ours), then the byte offset of every float argument is located; per frame the 52 floats
are scattered into the template with one numpy assignment and the frame number with one
``pack_into``.
"""

from __future__ import annotations

import struct
from typing import Literal

import numpy as np
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.blendshapes import EPIC_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.clock import wall_time
from bridge.errors import BridgeError
from bridge.frame import FPS, FaceFrame
from bridge.outputs.base import inverse_permutation, wrap_int32
from bridge.outputs.osc_template import check_address

OscScheme = Literal["arkit", "vmc"]
SCHEMES: tuple[str, ...] = ("arkit", "vmc")

ARKIT_PREFIX = "/arkit/"
ARKIT_FRAME_ADDRESS = "/arkit/frame"
ARKIT_SPEECH_ADDRESS = "/arkit/speech"
ARKIT_TIME_ADDRESS = "/arkit/time"
_CAPTURE_PLACEHOLDER = 1234567.25  # exact as a double; located below, then zeroed
_SPEECH_PLACEHOLDER = 23456.5
VMC_VALUE_ADDRESS = "/VMC/Ext/Blend/Val"
VMC_APPLY_ADDRESS = "/VMC/Ext/Blend/Apply"
VMC_OK_ADDRESS = "/VMC/Ext/OK"
VMC_TIME_ADDRESS = "/VMC/Ext/T"
_TIME_PLACEHOLDER = 12345.5  # exact in float32; located below, then zeroed

_BUNDLE_HEADER = 16  # "#bundle\0" + 8-byte time tag
_I32 = struct.Struct(">i")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


def arkit_prefix(subject: str | None = None) -> str:
    """``/arkit/`` for one performer; ``/arkit/<subject>/`` when an output serves several."""
    return ARKIT_PREFIX if subject is None else f"{ARKIT_PREFIX}{subject}/"


def _messages(scheme: str, speech: bool = False, prefix: str = ARKIT_PREFIX) -> list[OscMessageBuilder]:
    """The bundle's messages, float slots filled with their index (checked below)."""
    msgs = []
    for i, name in enumerate(EPIC_NAMES):
        if scheme == "arkit":
            m = OscMessageBuilder(prefix + name)
        else:
            m = OscMessageBuilder(VMC_VALUE_ADDRESS)
            m.add_arg(name, OscMessageBuilder.ARG_TYPE_STRING)
        m.add_arg(float(i), OscMessageBuilder.ARG_TYPE_FLOAT)
        msgs.append(m)
    if scheme == "arkit":
        if speech:
            sp = OscMessageBuilder(prefix + "speech")
            sp.add_arg(_SPEECH_PLACEHOLDER, OscMessageBuilder.ARG_TYPE_FLOAT)
            msgs.append(sp)
        t = OscMessageBuilder(prefix + "time")
        t.add_arg(_CAPTURE_PLACEHOLDER, OscMessageBuilder.ARG_TYPE_DOUBLE)
        msgs.append(t)
        m = OscMessageBuilder(prefix + "frame")
        m.add_arg(0x5A5A5A5A, OscMessageBuilder.ARG_TYPE_INT)
        msgs.append(m)
        return msgs
    ok = OscMessageBuilder(VMC_OK_ADDRESS)
    ok.add_arg(1, OscMessageBuilder.ARG_TYPE_INT)
    t = OscMessageBuilder(VMC_TIME_ADDRESS)
    t.add_arg(_TIME_PLACEHOLDER, OscMessageBuilder.ARG_TYPE_FLOAT)
    msgs += [ok, t, OscMessageBuilder(VMC_APPLY_ADDRESS)]
    return msgs


def check_subject(subject: str) -> None:
    """One-line BridgeError unless ``subject`` can be one part of an OSC address."""
    if "/" in subject:
        raise BridgeError(f"osc output: subject {subject!r} contains '/', which would split its OSC "
                          "address; give the performer a subject without it (performer.subject)")
    check_address(arkit_prefix(subject) + "JawOpen", f"osc output: subject {subject!r}",
                  "give the performer a subject without spaces or any of #*,?[]{} (performer.subject)")


def _last_arg_offsets(dgram: bytes) -> list[int]:
    """Offset of the last 4 bytes of every bundle element (where its last argument lives)."""
    offsets, pos = [], _BUNDLE_HEADER
    while pos < len(dgram):
        (size,) = _I32.unpack_from(dgram, pos)
        pos += 4 + size
        offsets.append(pos - 4)
    return offsets


class OscEncoder:
    """FaceFrame -> one OSC bundle (time tag "immediately") per frame.

    ``arkit``: ``/arkit/<EpicName> f`` for each of the 52 shapes, with ``speech`` also
    ``/arkit/speech f`` (1 - CTC blank probability; -1 when the model has no CTC head), then
    ``/arkit/time d`` (the time of day its last audio sample was captured, Unix seconds as a
    double: a float32 would be 128 s coarse) and ``/arkit/frame i``.
    ``vmc``: ``/VMC/Ext/Blend/Val s f`` for each of the 52, ``/VMC/Ext/OK i`` (1),
    ``/VMC/Ext/T f`` (``frame.number / 30``), then ``/VMC/Ext/Blend/Apply``.
    ``encode`` returns fresh ``bytes``; ``encode_view`` a view of the template, valid until
    the next call.  ``mirror`` swaps every Left/Right value (names stay in place).
    ``subject`` (``arkit`` only) puts every address under ``/arkit/<subject>/``: what an
    output serving several performers sends for each; None keeps ``/arkit/<Name>``.
    """

    def __init__(self, scheme: OscScheme = "arkit", mirror: bool = False, speech: bool = False,
                 subject: str | None = None) -> None:  # fmt: skip
        if scheme not in SCHEMES:
            raise BridgeError(f"osc output: scheme {scheme!r} is not known; use arkit or vmc")
        if speech and scheme != "arkit":
            raise BridgeError('osc output: speech = true needs scheme = "arkit" (VMC has no such clip)')
        if subject is not None:
            if scheme != "arkit":
                raise BridgeError('osc output: only scheme = "arkit" carries a subject '
                                  "(VMC serves one performer)")
            check_subject(subject)
        self.scheme = scheme
        self.mirror = mirror
        self.subject = subject
        bundle = OscBundleBuilder(IMMEDIATELY)
        for m in _messages(scheme, speech, arkit_prefix(subject)):
            bundle.add_content(m.build())
        dgram = bundle.build().dgram
        offsets = _last_arg_offsets(dgram)
        # Trust, but verify: every float slot must hold the index it was built with.
        for i in range(NUM_BLENDSHAPES):
            if _F32.unpack_from(dgram, offsets[i])[0] != float(i):
                raise RuntimeError(f"OSC template: float {i} not at offset {offsets[i]}")
        self._buf = bytearray(dgram)
        self._view = memoryview(self._buf)
        self._frame_at: int | None = None
        self._time_at: int | None = None
        if scheme == "vmc":
            self._time_at = offsets[NUM_BLENDSHAPES + 1]
            if _F32.unpack_from(dgram, self._time_at)[0] != _TIME_PLACEHOLDER:
                raise RuntimeError("OSC template: VMC time not found")
            _F32.pack_into(self._buf, self._time_at, 0.0)
        self._speech_at: int | None = None
        if speech:
            self._speech_at = offsets[NUM_BLENDSHAPES]
            if _F32.unpack_from(dgram, self._speech_at)[0] != _SPEECH_PLACEHOLDER:
                raise RuntimeError("OSC template: speech value not found")
            _F32.pack_into(self._buf, self._speech_at, -1.0)
        self._capture_at: int | None = None
        if scheme == "arkit":
            self._capture_at = offsets[NUM_BLENDSHAPES + (1 if speech else 0)] - 4  # a double: 8 bytes
            if _F64.unpack_from(dgram, self._capture_at)[0] != _CAPTURE_PLACEHOLDER:
                raise RuntimeError("OSC template: capture time not found")
            _F64.pack_into(self._buf, self._capture_at, 0.0)
            self._frame_at = offsets[NUM_BLENDSHAPES + (2 if speech else 1)]
            if _I32.unpack_from(dgram, self._frame_at)[0] != 0x5A5A5A5A:
                raise RuntimeError("OSC template: frame number not found")
            _I32.pack_into(self._buf, self._frame_at, 0)
        value_at = np.asarray(offsets[:NUM_BLENDSHAPES], dtype=np.intp)
        if mirror:
            # Value i goes where its mirror name's message is: fold the swap into the scatter.
            value_at = value_at[inverse_permutation(mirror_permutation(EPIC_NAMES))]
        self._bytes_at = value_at[:, None] + np.arange(4, dtype=np.intp)  # (52, 4)
        self._u8 = np.frombuffer(self._buf, dtype=np.uint8)
        self._scratch = np.zeros(NUM_BLENDSHAPES, dtype=">f4")
        self._scratch_u8 = self._scratch.view(np.uint8).reshape(NUM_BLENDSHAPES, 4)
        self._u8[self._bytes_at] = self._scratch_u8  # template starts at all zeros

    @property
    def size(self) -> int:
        """Bytes per bundle."""
        return len(self._buf)

    def encode_view(self, frame: FaceFrame) -> memoryview:
        """Patch the 52 floats (and the frame number, the capture time) into the template; return a view."""
        self._scratch[:] = frame.values
        self._u8[self._bytes_at] = self._scratch_u8
        if self._frame_at is not None:
            _I32.pack_into(self._buf, self._frame_at, wrap_int32(frame.number))
        if self._time_at is not None:
            _F32.pack_into(self._buf, self._time_at, frame.number / FPS)
        if self._capture_at is not None:
            _F64.pack_into(self._buf, self._capture_at, wall_time(frame.capture_time))
        if self._speech_at is not None:
            prob = frame.speech_prob
            _F32.pack_into(self._buf, self._speech_at, -1.0 if prob is None else prob)
        return self._view

    def encode(self, frame: FaceFrame) -> bytes:
        """Like :meth:`encode_view`, as an independent ``bytes`` copy."""
        return bytes(self.encode_view(frame))

    @property
    def speech(self) -> bool:
        """Whether the bundle carries ``/arkit/speech``."""
        return self._speech_at is not None

    def layout(self) -> tuple[bytes, dict[str, tuple[np.ndarray, int]]]:
        """The bundle and where its per-frame fields lie, for a batch encoder that patches
        many bundles at once (:class:`~bridge.outputs.packet_table.PacketTable` fields):
        ``values`` (value ``k`` of Epic's 52, mirror folded in; 4 bytes each), and those of
        ``frame`` (int32), ``capture`` (float64), ``speech`` and ``time`` (float32) it has."""
        fields: dict[str, tuple[np.ndarray, int]] = {"values": (self._bytes_at[:, 0].copy(), 4)}
        for name, at, width in (("frame", self._frame_at, 4), ("capture", self._capture_at, 8),
                                ("speech", self._speech_at, 4), ("time", self._time_at, 4)):  # fmt: skip
            if at is not None:
                fields[name] = (np.array([at]), width)
        return bytes(self._buf), fields
