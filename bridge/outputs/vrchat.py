"""VRChat avatar parameters over OSC: ``/avatar/parameters/<prefix><Name> f`` to UDP 9000.

Two naming schemes: ``arkit`` sends the 52 ARKit weights under their ARKit names (``epic``:
the same in Epic's UpperCamelCase), ``unified`` sends VRCFaceTracking's Unified
Expressions v2 parameters (``v2/JawOpen``, ``v2/JawX``, ...; see :mod:`bridge.outputs.unified`).
VRChat reads OSC bundles (VRCFaceTracking itself sends it bundles of at most 4096 bytes),
so by default a frame goes out as one or two bundles; ``bundle = false`` sends every
parameter as its own datagram instead.  Either way the messages are prebuilt
(:class:`~bridge.outputs.osc_template.OscTemplate`) and only their floats change per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, canonical_index, mirror_permutation
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs.base import Buffer
from bridge.outputs.osc_template import OscTemplate, check_address
from bridge.outputs.unified import UNIFIED_NAMES, UNIFIED_PREFIX, unified_matrix, unified_name

VrchatNames = Literal["arkit", "epic", "unified"]
NAME_SCHEMES: tuple[str, ...] = ("arkit", "epic", "unified")
AVATAR_PARAMETERS = "/avatar/parameters/"


def default_prefix(names: str) -> str:
    """VRCFT's ``v2/`` for Unified Expressions, nothing for ARKit names."""
    return UNIFIED_PREFIX if names == "unified" else ""


def resolve_parameter(names: str, name: str) -> str:
    """The canonical spelling of one parameter of scheme ``names`` (BridgeError if unknown)."""
    if names == "unified":
        return unified_name(name)
    spelled = ARKIT_NAMES if names == "arkit" else EPIC_NAMES
    return spelled[canonical_index(name)]


class VrchatEncoder:
    """FaceFrame -> the OSC packets VRChat reads, one float per avatar parameter.

    ``parameters`` picks (and orders) what is sent (default: every name of the scheme);
    ``rename`` maps a parameter to the name the avatar uses (the prefix still applies);
    ``mirror`` swaps every Left/Right ARKit value before anything is derived, so a signed
    ``JawX`` changes sign.  ``packet_views`` returns views valid until the next call.
    """

    def __init__(
        self,
        names: VrchatNames = "arkit",
        prefix: str | None = None,
        parameters: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        bundle: bool = True,
        mirror: bool = False,
    ) -> None:
        if names not in NAME_SCHEMES:
            raise BridgeError(f"vrchat output: names {names!r} is not known; use arkit, epic or unified")
        self.names = names
        self.prefix = default_prefix(names) if prefix is None else prefix
        self.mirror = mirror
        all_names = UNIFIED_NAMES if names == "unified" else (ARKIT_NAMES if names == "arkit" else EPIC_NAMES)
        chosen = [self._resolve(n, "parameters") for n in parameters] if parameters is not None else all_names
        dupes = sorted({n for n in chosen if list(chosen).count(n) > 1})
        if dupes:
            raise BridgeError(f"vrchat output: output.parameters names {', '.join(dupes)} more than once")
        if not chosen:
            raise BridgeError("vrchat output: output.parameters is empty; name at least one parameter")
        self.parameters: tuple[str, ...] = tuple(chosen)
        renamed = {self._resolve(k, "rename"): v for k, v in (rename or {}).items()}
        for key in renamed:
            if key not in self.parameters:
                raise BridgeError(
                    f"vrchat output: output.rename renames {key!r}, which output.parameters does not send; "
                    "add it to parameters or drop the rename"
                )
        self.sent_names = tuple(renamed.get(n, n) for n in self.parameters)
        addresses = [AVATAR_PARAMETERS + self.prefix + n for n in self.sent_names]
        for a in addresses:
            check_address(a, "vrchat output", "fix output.prefix / output.rename")
        if len(set(addresses)) != len(addresses):
            raise BridgeError("vrchat output: output.rename gives two parameters the same name")
        if names == "unified":
            self._m, self._bias, maxes = unified_matrix(self.parameters)
            self._max_rows = np.array([r for r, _, _, _ in maxes], dtype=np.intp)
            self._max_coef = np.array([c for _, c, _, _ in maxes], dtype=np.float32)
            self._max_a = np.array([a for _, _, a, _ in maxes], dtype=np.intp)
            self._max_b = np.array([b for _, _, _, b in maxes], dtype=np.intp)
        else:
            self._pick = np.array([canonical_index(n) for n in self.parameters], dtype=np.intp)
        self._perm = mirror_permutation(ARKIT_NAMES) if mirror else None
        self._out = np.zeros(len(self.parameters), dtype=np.float32)
        self.template = OscTemplate(addresses, arg_type="f", bundle=bundle)

    def _resolve(self, name: str, key: str) -> str:
        try:
            return resolve_parameter(self.names, str(name))
        except BridgeError as e:
            raise BridgeError(f"vrchat output (names = {self.names!r}): output.{key}: {e}") from None

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.template.addresses

    def values(self, frame: FaceFrame) -> np.ndarray:
        """The parameter values of ``frame``, in ``self.parameters`` order (a reused array)."""
        src = frame.values if self._perm is None else frame.values[self._perm]
        if self.names != "unified":
            np.take(src, self._pick, out=self._out)
            return self._out
        np.matmul(self._m, src, out=self._out)
        self._out += self._bias
        if self._max_rows.size:
            peaks = np.maximum(src[self._max_a], src[self._max_b])
            np.add.at(self._out, self._max_rows, self._max_coef * peaks)
        return self._out

    def packet_views(self, frame: FaceFrame) -> Sequence[Buffer]:
        self.template.set(self.values(frame))
        return self.template.full

    def encode_packets(self, frame: FaceFrame) -> list[bytes]:
        return [bytes(p) for p in self.packet_views(frame)]
