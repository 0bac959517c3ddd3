"""OSC messages built once, patched per frame: the shared core of the per-address outputs.

Per-address receivers (VRChat, consoles) want one OSC message per value.  Building 50 to 120
messages with python-osc on every frame would cost more than the model's hop, so
:class:`OscTemplate` builds each message once with python-osc's builders (their framing, not
ours), lays them out back to back in one buffer, finds the byte offset of every message's
numeric argument, and per frame writes all the numbers with one numpy scatter.

The buffer holds each message as a bundle *element* (int32 size, then the message), and, in
bundle mode, the ``#bundle`` header in front of each group of elements, so a whole bundle is
one contiguous slice and a single message is a slice inside it: sending either costs no copy.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.errors import BridgeError
from bridge.outputs.base import Buffer

#: Largest bundle sent: VRCFaceTracking sends VRChat bundles of at most this many bytes.
MAX_BUNDLE_BYTES = 4096
#: ``#bundle\0`` and the time tag 1 ("immediately"), as every bundle here starts.
BUNDLE_HEADER = b"#bundle\x00" + struct.pack(">Q", 1)
_SIZE = struct.Struct(">i")

#: Characters OSC 1.0 reserves in address patterns, plus space (no receiver expects it).
_RESERVED = set(" #*,?[]{}")

ArgType = Literal["f", "i"]
#: The type tag byte of a bool message: ``T`` (true) or ``F`` (false); bools carry no data.
_TRUE, _FALSE = ord("T"), ord("F")


def check_address(address: str, what: str, fix: str) -> None:
    """One-line BridgeError unless ``address`` is a plain OSC address (no pattern characters)."""
    bad = sorted({c for c in address if c in _RESERVED or ord(c) < 32})
    if not address.startswith("/") or bad or "//" in address:
        why = "must start with '/'" if not address.startswith("/") else "contains '//'"
        if bad:
            why = "contains " + " ".join(repr(c) for c in bad) + " (reserved in OSC addresses)"
        raise BridgeError(f"{what}: OSC address {address!r} {why}; {fix}")


class OscTemplate:
    """``len(addresses)`` OSC messages, each with one numeric argument (``f`` or ``i``), or
    one bool (type tag ``T``/``F``) where ``bools`` marks it.

    ``set(values)`` writes the numbers and ``set_bools(flags)`` the bools (each in address
    order among their own kind); ``full`` are the packets that carry every message
    (bundles of at most ``max_bundle`` bytes, or each message alone); ``pack(indices)`` the
    packets for a subset (new bytes for bundles, zero-copy views for single messages).
    Views stay valid for the template's lifetime; their content changes with ``set``.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        arg_type: ArgType = "f",
        bundle: bool = False,
        max_bundle: int = MAX_BUNDLE_BYTES,
        bools: Sequence[bool] | None = None,
    ) -> None:
        if arg_type not in ("f", "i"):
            raise ValueError(f"arg_type {arg_type!r}")
        self.addresses = tuple(addresses)
        is_bool = [bool(b) for b in bools] if bools is not None else [False] * len(self.addresses)
        if len(is_bool) != len(self.addresses):
            raise ValueError("bools must mark every address")
        self.bundle = bundle
        self.max_bundle = max_bundle
        kind = OscMessageBuilder.ARG_TYPE_FLOAT if arg_type == "f" else OscMessageBuilder.ARG_TYPE_INT
        unpack = struct.Struct(">f" if arg_type == "f" else ">i").unpack_from
        dgrams: list[bytes] = []
        tag_in_msg: dict[int, int] = {}
        for i, address in enumerate(self.addresses):
            if is_bool[i]:
                dgrams.append(self._bool_message(address))
                tag_in_msg[i] = dgrams[-1].rindex(b",F") + 1
                continue
            m = OscMessageBuilder(address)
            m.add_arg(float(i) if arg_type == "f" else i, kind)
            dgram = m.build().dgram
            if unpack(dgram, len(dgram) - 4)[0] != i:  # trust, but verify: the number is last
                raise RuntimeError(f"OSC template: argument of {address} not in its last 4 bytes")
            dgrams.append(dgram)
        self._dgrams = dgrams
        groups = self._groups(range(len(dgrams))) if bundle else [[i] for i in range(len(dgrams))]
        buf = bytearray()
        msg_at = [0] * len(dgrams)
        full: list[tuple[int, int]] = []
        for group in groups:
            start = len(buf)
            if bundle:
                buf += BUNDLE_HEADER
            for i in group:
                buf += _SIZE.pack(len(dgrams[i]))
                msg_at[i] = len(buf)
                buf += dgrams[i]
            if bundle:
                self._check_bundle(bytes(buf[start:]), group)
                full.append((start, len(buf)))
            else:
                full.append((msg_at[group[0]], len(buf)))
        self._buf = buf
        view = memoryview(buf)
        self._view = view
        self._msg = [view[msg_at[i] : msg_at[i] + len(d)] for i, d in enumerate(dgrams)]
        self._elem = [view[msg_at[i] - 4 : msg_at[i] + len(d)] for i, d in enumerate(dgrams)]
        #: Packets that carry every message, in address order.
        self.full: list[memoryview] = [view[a:b] for a, b in full]
        numeric = [i for i in range(len(dgrams)) if not is_bool[i]]
        value_at = np.array([msg_at[i] + len(dgrams[i]) - 4 for i in numeric], dtype=np.intp)
        self._bytes_at = value_at[:, None] + np.arange(4, dtype=np.intp)
        self._u8 = np.frombuffer(buf, dtype=np.uint8)
        self._scratch = np.zeros(len(numeric), dtype=">f4" if arg_type == "f" else ">i4")
        self._scratch_u8 = self._scratch.view(np.uint8).reshape(len(numeric), 4)
        self._u8[self._bytes_at] = self._scratch_u8  # every number starts at 0
        self._tag_at = np.array([msg_at[i] + t for i, t in tag_in_msg.items()], dtype=np.intp)
        self._tags = np.full(len(tag_in_msg), _FALSE, dtype=np.uint8)  # every bool starts false
        #: How many numeric and how many bool messages the template holds.
        self.numeric_count, self.bool_count = len(numeric), len(tag_in_msg)

    @staticmethod
    def _bool_message(address: str) -> bytes:
        """A bool message (false); true differs only in its type tag byte, which is checked."""
        built = {}
        tags = ((False, OscMessageBuilder.ARG_TYPE_FALSE), (True, OscMessageBuilder.ARG_TYPE_TRUE))
        for value, tag in tags:
            m = OscMessageBuilder(address)
            m.add_arg(value, tag)
            built[value] = m.build().dgram
        diff = [k for k, (a, b) in enumerate(zip(built[False], built[True], strict=True)) if a != b]
        if diff != [built[False].rindex(b",F") + 1]:
            raise RuntimeError(f"OSC template: bool message {address} differs beyond its type tag")
        return built[False]

    def _groups(self, indices: Sequence[int] | range) -> list[list[int]]:
        """Greedy packing into bundles of at most ``max_bundle`` bytes (a lone oversized
        message still gets its own bundle: it cannot be split)."""
        groups: list[list[int]] = []
        size = 0
        for i in indices:
            need = 4 + len(self._dgrams[i])
            if not groups or size + need > self.max_bundle:
                groups.append([])
                size = len(BUNDLE_HEADER)
            groups[-1].append(i)
            size += need
        return groups

    def _check_bundle(self, data: bytes, group: list[int]) -> None:
        """Our layout must be byte-identical to the bundle python-osc builds."""
        builder = OscBundleBuilder(IMMEDIATELY)
        for i in group:
            builder.add_content(OscMessage(self._dgrams[i]))
        if builder.build().dgram != data:
            raise RuntimeError("OSC template: bundle layout differs from python-osc's")

    def __len__(self) -> int:
        return len(self._dgrams)

    @property
    def size(self) -> int:
        """Bytes of all ``full`` packets together."""
        return sum(len(p) for p in self.full)

    def set(self, values: np.ndarray) -> None:
        """Write one number per numeric message (cast to float32 / int32, big-endian)."""
        self._scratch[:] = values
        self._u8[self._bytes_at] = self._scratch_u8

    def set_bools(self, flags: np.ndarray) -> None:
        """Write one bool per bool message: its type tag becomes ``T`` or ``F``."""
        np.multiply(flags, _TRUE - _FALSE, out=self._tags, casting="unsafe")
        self._tags += _FALSE
        self._u8[self._tag_at] = self._tags

    def message(self, i: int) -> memoryview:
        """Message ``i`` alone (a view)."""
        return self._msg[i]

    def pack(self, indices: Sequence[int] | np.ndarray) -> list[Buffer]:
        """The packets that carry messages ``indices`` (in the order given)."""
        if not self.bundle:
            return [self._msg[i] for i in indices]
        return [
            b"".join([BUNDLE_HEADER, *(self._elem[i] for i in group)])
            for group in self._groups([int(i) for i in indices])
        ]
