"""VRChat avatar parameters over OSC: ``/avatar/parameters/<prefix><Name>`` to UDP 9000.

Two naming schemes: ``arkit`` sends the 52 ARKit weights under their ARKit names (``epic``:
the same in Epic's UpperCamelCase), ``unified`` sends VRCFaceTracking's Unified
Expressions v2 parameters (``FT/v2/JawOpen``, ``FT/v2/JawX``, ...; see
:mod:`bridge.outputs.unified`).

What one frame becomes is a :class:`VrchatPlan`.  Without an avatar it is one float per
parameter under ``prefix``.  Given the avatar's OSC config (a file, or the one VRChat
writes when it announces ``/avatar/change``, see :mod:`bridge.outputs.vrchat_listener`), it
is exactly the parameters that avatar declares, each as the avatar declares it: floats as
floats, VRCFaceTracking's binary bools (``JawOpen1``, ``JawOpen2``, ``JawOpen4``,
``JawOpenNegative``) as the bits VRCFT would send for the same value
(:mod:`bridge.outputs.vrchat_avatar`).  A new plan is built off the hop thread and swapped
in with one reference assignment.

VRChat reads OSC bundles of at most 4096 bytes (VRCFaceTracking never sends it more), so by
default a frame goes out as as many bundles as that takes; ``bundle = false`` sends every
message as its own datagram.  Either way the messages are prebuilt
(:class:`~bridge.outputs.osc_template.OscTemplate`) and only their numbers and bool type
tags change per frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, EPIC_NAMES, canonical_index, mirror_permutation
from bridge.errors import BridgeError
from bridge.frame import FaceFrame
from bridge.outputs.base import Buffer, Output, Transport
from bridge.outputs.osc_template import OscTemplate, check_address
from bridge.outputs.unified import UNIFIED_NAMES, UNIFIED_PREFIX, UnifiedMap, unified_name
from bridge.outputs.vrchat_avatar import AvatarConfig, Binding, bind_avatar

if TYPE_CHECKING:
    from bridge.outputs.vrchat_listener import AvatarFollower

VrchatNames = Literal["arkit", "epic", "unified"]
NAME_SCHEMES: tuple[str, ...] = ("arkit", "epic", "unified")
AVATAR_PARAMETERS = "/avatar/parameters/"
#: The prefix of the most used face-tracking avatar templates, the default for ``unified``.
FT_PREFIX = "FT/" + UNIFIED_PREFIX
#: VRCFT sets every bit of a binary parameter above this magnitude (its "floor 1" fix).
_ALL_BITS_ABOVE = np.float32(0.99999)


def default_prefix(names: str) -> str:
    """``FT/v2/`` (the common face-tracking templates) for Unified Expressions, else nothing."""
    return FT_PREFIX if names == "unified" else ""


def resolve_parameter(names: str, name: str) -> str:
    """The canonical spelling of one parameter of scheme ``names`` (BridgeError if unknown)."""
    if names == "unified":
        return unified_name(name)
    spelled = ARKIT_NAMES if names == "arkit" else EPIC_NAMES
    return spelled[canonical_index(name)]


class _Derived:
    """The values of some parameters of one scheme, from a frame's 52 ARKit weights.

    Unified parameters follow VRCFaceTracking's own Live Link formulas (:class:`UnifiedMap`),
    so an avatar looks the same fed by the bridge or by VRCFT reading our Live Link packets.
    """

    def __init__(self, names: str, parameters: Sequence[str], mirror: bool) -> None:
        self._unified = UnifiedMap(tuple(parameters), mirror=mirror) if names == "unified" else None
        if self._unified is None:
            self._pick = np.array([canonical_index(n) for n in parameters], dtype=np.intp)
        self._perm = mirror_permutation(ARKIT_NAMES) if mirror else None
        self._out = np.zeros(len(parameters), dtype=np.float32)

    def __call__(self, frame: FaceFrame) -> np.ndarray:
        """The values, in ``parameters`` order (a reused array)."""
        if self._unified is not None:
            return self._unified(frame.values, frame.head)  # mirrors by itself
        src = frame.values if self._perm is None else frame.values[self._perm]
        np.take(src, self._pick, out=self._out)
        return self._out


@dataclass(frozen=True, slots=True)
class _Message:
    """One OSC message of a plan: ``value`` indexes the derived values; ``kind`` says how
    the value is encoded (a float, one bit of a binary parameter, a sign flag, a plain bool)."""

    address: str
    kind: Literal["float", "bit", "negative", "bool"]
    value: int
    bit: int = 0
    bits: int = 0
    signed: bool = False


class VrchatPlan:
    """The OSC messages one frame becomes, built once; ``packets`` fills them per frame."""

    def __init__(self, derived: _Derived, parameters: tuple[str, ...], messages: Sequence[_Message],
                 bundle: bool, avatar: AvatarConfig | None = None) -> None:  # fmt: skip
        self.parameters = parameters
        self.avatar = avatar
        self.messages = tuple(messages)
        self._derived = derived
        self.template = OscTemplate([m.address for m in messages], arg_type="f", bundle=bundle,
                                    bools=[m.kind != "float" for m in messages])  # fmt: skip
        floats = [m for m in messages if m.kind == "float"]
        flags = [m for m in messages if m.kind != "float"]
        self._float_src = np.array([m.value for m in floats], dtype=np.intp)
        self._floats = np.zeros(len(floats), dtype=np.float32)
        kinds = ("bit", "negative", "bool")
        pos = {kind: [i for i, m in enumerate(flags) if m.kind == kind] for kind in kinds}
        bit_msgs = [flags[i] for i in pos["bit"]]
        self._bit_pos = np.array(pos["bit"], dtype=np.intp)
        self._bit_src = np.array([m.value for m in bit_msgs], dtype=np.intp)
        self._bit_shift = np.array([m.bit for m in bit_msgs], dtype=np.int64)
        self._bit_scale = np.array([2.0**m.bits for m in bit_msgs], dtype=np.float32)
        self._bit_unsigned = np.array([not m.signed for m in bit_msgs], dtype=bool)
        self._neg_pos = np.array(pos["negative"], dtype=np.intp)
        self._neg_src = np.array([flags[i].value for i in pos["negative"]], dtype=np.intp)
        self._bool_pos = np.array(pos["bool"], dtype=np.intp)
        self._bool_src = np.array([flags[i].value for i in pos["bool"]], dtype=np.intp)
        self._flags = np.zeros(len(flags), dtype=bool)
        self._bv = np.zeros(len(bit_msgs), dtype=np.float32)
        self._ba = np.zeros(len(bit_msgs), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.messages)

    def describe(self) -> str:
        kinds = [m.kind for m in self.messages]
        binary = len({m.value for m in self.messages if m.kind == "bit"})
        return (f"{len(self.parameters)} parameters: {kinds.count('float')} floats, {binary} binary "
                f"({kinds.count('bit')} bits, {kinds.count('negative')} sign flags), "
                f"{kinds.count('bool')} bools; {len(self.template.full)} packets per frame")  # fmt: skip

    def bool_flags(self, values: np.ndarray) -> np.ndarray:
        """Every bool message's value for the derived ``values`` (VRCFT's encodings)."""
        if self._bit_pos.size:
            np.take(values, self._bit_src, out=self._bv)
            np.nan_to_num(self._bv, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            dropped = (self._bv < 0) & self._bit_unsigned  # no sign flag: negative sends all false
            np.abs(self._bv, out=self._ba)
            full = self._ba > _ALL_BITS_ABOVE
            np.minimum(self._ba, 1.0, out=self._ba)
            np.multiply(self._ba, self._bit_scale, out=self._ba)  # exact: a power of two
            big = np.floor(self._ba).astype(np.int64)  # C#'s (int) truncation, the value is >= 0
            bits = ((big >> self._bit_shift) & 1).astype(bool) | full
            self._flags[self._bit_pos] = bits & ~dropped
        if self._neg_pos.size:
            self._flags[self._neg_pos] = values[self._neg_src] < 0
        if self._bool_pos.size:
            self._flags[self._bool_pos] = values[self._bool_src] < 0.5  # VRCFT's minBoolThreshold
        return self._flags

    def packets(self, frame: FaceFrame) -> Sequence[Buffer]:
        values = self._derived(frame)
        if self._float_src.size:
            np.take(values, self._float_src, out=self._floats)
            self.template.set(self._floats)
        if self._flags.size:
            self.template.set_bools(self.bool_flags(values))
        return self.template.full


class VrchatEncoder:
    """FaceFrame -> the OSC packets VRChat reads.

    ``parameters`` picks (and orders) what is sent (default: every name of the scheme);
    ``rename`` maps a parameter to the name the avatar uses (the prefix still applies);
    ``mirror`` swaps every Left/Right ARKit value before anything is derived, so a signed
    ``JawX`` changes sign.  With ``avatar`` (or later :meth:`use`), the avatar's own
    parameter list decides what is sent and how (``prefix`` then plays no part: the
    avatar's addresses are used).  ``packet_views`` returns views valid until the next call.
    """

    def __init__(
        self,
        names: VrchatNames = "arkit",
        prefix: str | None = None,
        parameters: Sequence[str] | None = None,
        rename: Mapping[str, str] | None = None,
        bundle: bool = True,
        mirror: bool = False,
        avatar: AvatarConfig | None = None,
    ) -> None:
        if names not in NAME_SCHEMES:
            raise BridgeError(f"vrchat output: names {names!r} is not known; use arkit, epic or unified")
        self.names = names
        self.prefix = default_prefix(names) if prefix is None else prefix
        self.mirror = mirror
        self.bundle = bundle
        all_names = UNIFIED_NAMES if names == "unified" else (ARKIT_NAMES if names == "arkit" else EPIC_NAMES)
        chosen = [self._resolve(n, "parameters") for n in parameters] if parameters is not None else all_names
        dupes = sorted({n for n in chosen if list(chosen).count(n) > 1})
        if dupes:
            raise BridgeError(f"vrchat output: output.parameters names {', '.join(dupes)} more than once")
        if not chosen:
            raise BridgeError("vrchat output: output.parameters is empty; name at least one parameter")
        self.candidates: tuple[str, ...] = tuple(chosen)
        renamed = {self._resolve(k, "rename"): v for k, v in (rename or {}).items()}
        for key in renamed:
            if key not in self.candidates:
                raise BridgeError(
                    f"vrchat output: output.rename renames {key!r}, which output.parameters does not send; "
                    "add it to parameters or drop the rename"
                )
        self._renamed = renamed
        sent_names = [renamed.get(n, n) for n in self.candidates]
        addresses = [AVATAR_PARAMETERS + self.prefix + n for n in sent_names]
        for a in addresses:
            check_address(a, "vrchat output", "fix output.prefix / output.rename")
        if len(set(addresses)) != len(addresses):
            raise BridgeError("vrchat output: output.rename gives two parameters the same name")
        derived = _Derived(names, self.candidates, mirror)
        floats = [_Message(a, "float", i) for i, a in enumerate(addresses)]
        #: The plan without an avatar: one float per parameter, under ``prefix``.
        self.default_plan = VrchatPlan(derived, self.candidates, floats, bundle)
        self._plan = self.default_plan
        if avatar is not None:
            plan = self.plan_for(avatar)
            if not len(plan):
                raise BridgeError(
                    f"vrchat output: avatar config {avatar.source} declares none of the parameters the "
                    f"bridge sends (such as {self._target(self.candidates[0])}, any prefix, as a Float or "
                    "binary Bools); point output.avatar_config at a face-tracking avatar's file"
                )
            self._plan = plan

    def _resolve(self, name: str, key: str) -> str:
        try:
            return resolve_parameter(self.names, str(name))
        except BridgeError as e:
            raise BridgeError(f"vrchat output (names = {self.names!r}): output.{key}: {e}") from None

    def _target(self, parameter: str) -> str:
        """The name an avatar gives ``parameter`` (``v2/JawOpen``, after any prefix)."""
        default = UNIFIED_PREFIX + parameter if self.names == "unified" else parameter
        return self._renamed.get(parameter, default)

    def plan_for(self, avatar: AvatarConfig) -> VrchatPlan:
        """The plan that sends exactly what ``avatar`` declares (pure: safe on any thread)."""
        bindings: list[Binding] = bind_avatar(avatar, [(p, self._target(p)) for p in self.candidates])
        value_of = {b.parameter: i for i, b in enumerate(bindings)}
        order = {p.address: k for k, p in enumerate(avatar.parameters)}
        messages: list[_Message] = []
        for b in bindings:
            i, n, signed = value_of[b.parameter], len(b.bits), bool(b.negative_address)
            if b.float_address:
                messages.append(_Message(b.float_address, "float", i))
            messages += [_Message(a, "bit", i, bit, n, signed) for bit, a in b.bits]
            if b.negative_address:
                messages.append(_Message(b.negative_address, "negative", i))
            if b.bool_address:
                messages.append(_Message(b.bool_address, "bool", i))
        messages.sort(key=lambda m: order[m.address])  # the avatar file's order
        parameters = tuple(b.parameter for b in bindings)
        return VrchatPlan(_Derived(self.names, parameters, self.mirror), parameters, messages,
                          self.bundle, avatar)  # fmt: skip

    def use(self, plan: VrchatPlan) -> None:
        """Send ``plan`` from the next frame on (one atomic reference swap)."""
        self._plan = plan

    @property
    def plan(self) -> VrchatPlan:
        return self._plan

    @property
    def parameters(self) -> tuple[str, ...]:
        return self._plan.parameters

    @property
    def template(self) -> OscTemplate:
        return self._plan.template

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._plan.template.addresses

    def values(self, frame: FaceFrame) -> np.ndarray:
        """The current plan's parameter values of ``frame`` (a reused array)."""
        return self._plan._derived(frame)

    def packet_views(self, frame: FaceFrame) -> Sequence[Buffer]:
        return self._plan.packets(frame)

    def encode_packets(self, frame: FaceFrame) -> list[bytes]:
        return [bytes(p) for p in self.packet_views(frame)]


class VrchatOutput(Output):
    """The VRChat output; owns the thread that follows the avatar (when listening)."""

    def __init__(self, name: str, encoder: VrchatEncoder, transport: Transport,
                 follower: AvatarFollower | None = None, *, performer: int = 0) -> None:  # fmt: skip
        super().__init__(name, encoder, transport, routes={performer: encoder})
        self.follower = follower

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
        super().close()

    def stats(self) -> dict[str, int]:
        out = dict(self.transport.stats())
        if self.follower is not None:
            out.update(self.follower.stats())
        return out
