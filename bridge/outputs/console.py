"""OSC for show control (QLab, TouchDesigner, Max, Resolume, lighting desks): one message
per channel, on addresses, in ranges and at rates the desk chooses.

Per output: a subset of the 52 blendshapes (``channels``), a rename map, an address template
(``/face/{name}``; ``{name}`` and ``{index}``), a value range (``[0, 100]``, ``[0, 255]``)
sent as floats or ints, and send-on-change: a channel goes out when it has moved more than
``threshold`` (in output units) from the value last *sent*, and every channel goes out every
``keepalive_s`` seconds so a desk that joined late or lost a packet catches up.  Time is
counted in frames (``keepalive_s * 30``), never read from a clock, so the encoder is pure
and a test replays it exactly.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, NUM_BLENDSHAPES, canonical_index, mirror_permutation
from bridge.errors import BridgeError
from bridge.frame import FPS, FaceFrame
from bridge.outputs.base import Buffer
from bridge.outputs.osc_template import OscTemplate, check_address

ValueType = Literal["float", "int"]
PLACEHOLDERS = ("name", "index")
DEFAULT_ADDRESS = "/face/{name}"
_INT32 = (-(2**31), 2**31 - 1)


def format_address(template: str, name: str, index: int) -> str:
    """``template`` with ``{name}`` / ``{index}`` filled (format specs allowed: ``{index:02d}``)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise BridgeError(
            f"console output: output.address = {template!r} is not a valid template ({e}); "
            "write literal braces as {{ }}"
        ) from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise BridgeError(
                f"console output: output.address = {template!r} has placeholder {{{f}}}; "
                "allowed: {name}, {index}"
            )
    try:
        return template.format(name=name, index=index)
    except (ValueError, TypeError) as e:
        raise BridgeError(f"console output: output.address = {template!r}: {e}") from None


class ConsoleEncoder:
    """FaceFrame -> the OSC messages (or bundles) a console wants this frame.

    ``{index}`` is the blendshape's index in Epic's order (0 = EyeBlinkLeft, 17 = JawOpen),
    stable whatever subset is sent; ``{name}`` its Epic name (``JawOpen``) unless renamed.
    Output value: ``lo + w * (hi - lo)`` for ``value_range = [lo, hi]`` (config: ``range``),
    clamped to the range, rounded for ``int``.  Stateful (what was last sent), so every frame goes through
    :meth:`packet_views` once, in order; :meth:`resync` makes the next frame send everything.
    """

    def __init__(
        self,
        channels: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        address: str = DEFAULT_ADDRESS,
        value_range: Sequence[float] = (0.0, 1.0),
        value_type: ValueType = "float",
        send_on_change: bool = False,
        threshold: float = 0.0,
        keepalive_s: float = 1.0,
        bundle: bool = False,
        mirror: bool = False,
    ) -> None:
        if value_type not in ("float", "int"):
            raise BridgeError(f"console output: output.value_type = {value_type!r}; allowed: float, int")
        if len(value_range) != 2 or value_range[0] == value_range[1]:
            raise BridgeError(
                f"console output: output.range = {list(value_range)!r} must be two different numbers "
                "[low, high], e.g. [0, 100]"
            )
        if threshold < 0 or keepalive_s < 0:
            raise BridgeError("console output: output.threshold and output.keepalive_s must be >= 0")
        idx = list(range(NUM_BLENDSHAPES))
        if channels is not None:
            idx = [self._index(n, "channels") for n in channels]
        if not idx:
            raise BridgeError("console output: output.channels is empty; name at least one blendshape")
        dupes = sorted({EPIC_NAMES[i] for i in idx if idx.count(i) > 1})
        if dupes:
            raise BridgeError(f"console output: output.channels names {', '.join(dupes)} more than once")
        renamed = {self._index(k, "rename"): v for k, v in (rename or {}).items()}
        for i in renamed:
            if i not in idx:
                raise BridgeError(
                    f"console output: output.rename renames {ARKIT_NAMES[i]!r}, which output.channels "
                    "does not send; add it to channels or drop the rename"
                )
        self.channels: tuple[int, ...] = tuple(idx)
        self.names = tuple(renamed.get(i, EPIC_NAMES[i]) for i in idx)
        addresses = [format_address(address, n, i) for n, i in zip(self.names, idx, strict=True)]
        for a in addresses:
            check_address(a, "console output", "fix output.address / output.rename")
        if len(set(addresses)) != len(addresses):
            raise BridgeError(
                f"console output: output.address = {address!r} gives several channels the same address; "
                "put {name} or {index} in it"
            )
        self.lo, self.hi = float(value_range[0]), float(value_range[1])
        self.value_type = value_type
        self.send_on_change = send_on_change
        self.threshold = float(threshold)
        self.keepalive_frames = round(keepalive_s * FPS)
        src = np.asarray(idx, dtype=np.intp)
        self._src = mirror_permutation(ARKIT_NAMES)[src] if mirror else src
        self.template = OscTemplate(addresses, arg_type="i" if value_type == "int" else "f", bundle=bundle)
        self._all = np.arange(len(idx), dtype=np.intp)
        self._scaled = np.zeros(NUM_BLENDSHAPES, dtype=np.float64)  # all 52 scaled, then picked
        self._out = np.zeros(len(idx), dtype=np.float64)
        self._last: np.ndarray | None = None  # values last sent, per channel
        self._last_full = 0  # frame number of the last full send

    @staticmethod
    def _index(name: str, key: str) -> int:
        try:
            return canonical_index(str(name))
        except BridgeError as e:
            raise BridgeError(f"console output: output.{key}: {e}") from None

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.template.addresses

    def resync(self) -> None:
        """Send every channel on the next frame (the receiver may have missed some)."""
        self._last = None

    def scale(self, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Blendshape weights -> output values (float64; whole numbers for ``int``), into
        ``out`` when given.  NaN becomes ``low``; everything is clamped to the range."""
        if out is None:
            out = np.empty(np.shape(weights), dtype=np.float64)
        np.multiply(weights, self.hi - self.lo, out=out, dtype=np.float64)
        out += self.lo
        # fmax/fmin keep the number over a NaN, so bounding by ``lo`` first turns NaN into lo
        # (and a value equal to a bound stays itself, as np.clip keeps it)
        to_lo, to_hi = (np.fmax, np.fmin) if self.lo < self.hi else (np.fmin, np.fmax)
        to_lo(out, self.lo, out=out)
        to_hi(out, self.hi, out=out)
        if self.value_type == "int":
            np.rint(out, out=out)
            np.clip(out, *_INT32, out=out)
        return out

    def due(self, frame: FaceFrame) -> tuple[np.ndarray, np.ndarray]:
        """(values, indices of the channels to send) for this frame; updates the state.
        The values are a buffer reused by the next call."""
        np.take(self.scale(frame.values, self._scaled), self._src, out=self._out)
        out = self._out
        if not self.send_on_change:
            return out, self._all
        n = frame.number
        if (
            self._last is None
            or n < self._last_full
            or (self.keepalive_frames > 0 and n - self._last_full >= self.keepalive_frames)
        ):
            self._last = out.copy()
            self._last_full = n
            return out, self._all
        changed = np.flatnonzero(np.abs(out - self._last) > self.threshold)
        self._last[changed] = out[changed]
        return out, changed

    def packet_views(self, frame: FaceFrame) -> Sequence[Buffer]:
        out, send = self.due(frame)
        if send.size == 0:
            return ()
        self.template.set(out)
        if send.size == len(self._all):
            return self.template.full
        return self.template.pack(send)

    def encode_packets(self, frame: FaceFrame) -> list[bytes]:
        return [bytes(p) for p in self.packet_views(frame)]
