"""Blendshape names and the orders they come in.

The bridge's canonical order is Epic's ``EARFaceBlendShape`` order for the 52
ARKit shapes (the Live Link Face order, the seed model card's list with
index 40 = mouthUpperUpRight).  Models may emit another order; they are mapped
here by *name*, never by index (see docs/protocols in ../shared/notes).
"""

from __future__ import annotations

import difflib
import re

import numpy as np

from bridge.errors import BridgeError

#: The 52 ARKit blendshapes in Epic's / Apple's order, lowerCamelCase (ARKit spelling).
ARKIT_NAMES: tuple[str, ...] = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft", "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight",
    "eyeLookOutRight", "eyeLookUpRight", "eyeSquintRight", "eyeWideRight", "jawForward",
    "jawLeft", "jawRight", "jawOpen", "mouthClose", "mouthFunnel",
    "mouthPucker", "mouthLeft", "mouthRight", "mouthSmileLeft", "mouthSmileRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "browDownLeft", "browDownRight", "browInnerUp",
    "browOuterUpLeft", "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "noseSneerLeft", "noseSneerRight", "tongueOut",
)  # fmt: skip

NUM_BLENDSHAPES = len(ARKIT_NAMES)

#: Epic's UpperCamelCase spelling of the same 52 names (Live Link, OSC ``arkit``, VMC Perfect Sync).
EPIC_NAMES: tuple[str, ...] = tuple(n[0].upper() + n[1:] for n in ARKIT_NAMES)

#: The 9 head / eye rotation values that follow the 52 shapes in a Live Link Face packet.
HEAD_EYE_NAMES: tuple[str, ...] = (
    "HeadYaw", "HeadPitch", "HeadRoll",
    "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
    "RightEyeYaw", "RightEyePitch", "RightEyeRoll",
)  # fmt: skip

#: All 61 Live Link Face values, in packet order.
LIVELINK_NAMES: tuple[str, ...] = EPIC_NAMES + HEAD_EYE_NAMES

#: Upstream LAM and wav2arkit order their outputs alphabetically.
ALPHABETICAL_NAMES: tuple[str, ...] = tuple(sorted(ARKIT_NAMES))

_INDEX = {name: i for i, name in enumerate(ARKIT_NAMES)}
_INDEX_FOLDED = {name.lower(): i for i, name in enumerate(ARKIT_NAMES)}


def canonical_index(name: str) -> int:
    """Index of ``name`` in :data:`ARKIT_NAMES`; accepts either spelling (any case)."""
    idx = _INDEX.get(name)
    if idx is None:
        idx = _INDEX_FOLDED.get(name.lower())
    if idx is None:
        close = difflib.get_close_matches(name, ARKIT_NAMES + EPIC_NAMES, n=3)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise BridgeError(f"unknown blendshape name {name!r}{hint}")
    return idx


def resolve_order(order: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Turn an ``output_order`` setting into the model's 52 output names, in its order.

    ``"arkit"`` is the seed card's (Epic) order, ``"alphabetical"`` upstream LAM's and
    wav2arkit's, and a list of 52 names is taken as given (each name once).
    """
    if isinstance(order, str):
        if order == "arkit":
            return ARKIT_NAMES
        if order == "alphabetical":
            return ALPHABETICAL_NAMES
        raise BridgeError(
            f'output_order {order!r} is not known; allowed: "arkit", "alphabetical" '
            "or a list of the 52 ARKit names in the model's order"
        )
    names = tuple(ARKIT_NAMES[canonical_index(str(n))] for n in order)
    if len(names) != NUM_BLENDSHAPES:
        raise BridgeError(f"output_order lists {len(names)} names; it must list all 52 ARKit names")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BridgeError(f"output_order names {', '.join(dupes)} more than once; each of the 52 once")
    return names


def model_to_canonical(model_order: tuple[str, ...]) -> np.ndarray:
    """Gather indices: ``canonical = model_values[..., idx]`` puts a model's outputs in Epic order."""
    pos = {name: i for i, name in enumerate(model_order)}
    return np.array([pos[name] for name in ARKIT_NAMES], dtype=np.intp)


def _swap_side(name: str) -> str:
    if "Left" in name:
        return name.replace("Left", "Right")
    if "Right" in name:
        return name.replace("Right", "Left")
    return name


def _mirror_eye_rotation(name: str) -> str:
    # LeftEyeYaw <-> RightEyeYaw: the side word is a prefix here.
    return re.sub(r"^(Left|Right)", lambda m: "Right" if m.group(1) == "Left" else "Left", name)


def mirror_permutation(names: tuple[str, ...] = LIVELINK_NAMES) -> np.ndarray:
    """Gather indices that swap every Left/Right pair (UE's mirror option), for ``names``."""
    pos = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        other = _mirror_eye_rotation(n) if n.endswith(("Yaw", "Pitch", "Roll")) else _swap_side(n)
        out.append(pos.get(other, pos[n]))
    return np.array(out, dtype=np.intp)
