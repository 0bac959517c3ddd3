"""ARKit -> VRCFaceTracking Unified Expressions v2, as the VRChat output sends them.

VRCFaceTracking (VRCFT) drives VRChat avatars through avatar parameters named
``v2/<Name>``.  Its names come in three families (VRCFT source,
``VRCFaceTracking.Core/Params/Expressions``): the base shapes (``UnifiedExpressions``
enum: ``JawOpen``, ``MouthCornerPullLeft``, ...), the simplified shapes
(``UnifiedSimpleExpressions``: ``BrowUpLeft``, ``MouthSmileLeft``, ...) and the combined
parameters (``UnifiedExpressionsParameters``: ``JawX``, ``MouthX``, ``SmileFrownLeft``,
``EyeLidLeft``, ...).  The base shapes are filled from ARKit the way VRCFT's own Live Link
module does (``ArKitPacketReader.cs``); the simplified and combined ones are then computed
with VRCFT's formulas.

Every parameter here is ``bias + sum(weight * arkit) + sum(coef * max(arkit_a, arkit_b))``,
so a whole frame is one small matrix product.  Two simplifications, both documented in
docs/wire-formats.md: eye openness is ``1 - eyeBlink`` (VRCFT's ARKit modules use
``1 - min(1, blink * (1 + squint))``), and the lip suck shapes take ``mouthRoll*`` alone
(VRCFT also caps the upper one by ``1 - mouthUpperUp ** (1/6)``).  ``Left`` is the
performer's left, as in ARKit and VRCFT; X axes are positive to the performer's right.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES
from bridge.errors import BridgeError

#: VRCFT's default parameter prefix for Unified Expressions (``/avatar/parameters/v2/...``).
UNIFIED_PREFIX = "v2/"


@dataclass(frozen=True, slots=True)
class UnifiedParam:
    """One v2 parameter as a function of the 52 ARKit weights."""

    name: str
    terms: tuple[tuple[str, float], ...]
    bias: float = 0.0
    maxes: tuple[tuple[float, str, str], ...] = ()  #: (coef, arkit a, arkit b): coef * max(a, b)

    @property
    def range(self) -> tuple[float, float]:
        """Values it takes when every ARKit weight is in 0..1 (e.g. -1..1 for JawX)."""
        coefs = [w for _, w in self.terms] + [c for c, _, _ in self.maxes]
        lo = self.bias + sum(min(0.0, c) for c in coefs)
        hi = self.bias + sum(max(0.0, c) for c in coefs)
        return round(lo, 6), round(hi, 6)


def _p(name: str, *terms: str | tuple[str, float], bias: float = 0.0,
       maxes: tuple[tuple[float, str, str], ...] = ()) -> UnifiedParam:  # fmt: skip
    norm = tuple((t, 1.0) if isinstance(t, str) else t for t in terms)
    return UnifiedParam(name, norm, bias, maxes)


def _sides(unified: str, arkit: str) -> list[UnifiedParam]:
    """``<unified>Left = <arkit>Left`` and the same for Right."""
    return [_p(f"{unified}{s}", f"{arkit}{s}") for s in ("Left", "Right")]


def _both(unified: str, arkit: str) -> list[UnifiedParam]:
    """``<unified>Left`` and ``<unified>Right`` from one unsided ARKit shape."""
    return [_p(f"{unified}{s}", arkit) for s in ("Left", "Right")]


def _mean(name: str, a: str, b: str, w: float = 0.5) -> UnifiedParam:
    return _p(name, (a, w), (b, w))


def _table() -> tuple[UnifiedParam, ...]:
    t: list[UnifiedParam] = []
    # --- base shapes (UnifiedExpressions), as VRCFT's Live Link / ARKit module fills them
    t += _sides("EyeSquint", "eyeSquint") + _sides("EyeWide", "eyeWide")
    t += _sides("BrowPinch", "browDown") + _sides("BrowLowerer", "browDown")
    t += _both("BrowInnerUp", "browInnerUp") + _sides("BrowOuterUp", "browOuterUp")
    t += _sides("CheekSquint", "cheekSquint") + _both("CheekPuff", "cheekPuff")
    t += [_p("JawOpen", "jawOpen"), _p("JawRight", "jawRight"), _p("JawLeft", "jawLeft")]
    t += [_p("JawForward", "jawForward"), _p("MouthClosed", "mouthClose")]
    t += _both("LipSuckUpper", "mouthRollUpper") + _both("LipSuckLower", "mouthRollLower")
    for part in ("LipFunnelUpper", "LipFunnelLower"):
        t += _both(part, "mouthFunnel")
    for part in ("LipPuckerUpper", "LipPuckerLower"):
        t += _both(part, "mouthPucker")
    t += _sides("MouthUpperUp", "mouthUpperUp") + _sides("MouthUpperDeepen", "mouthUpperUp")
    t += _sides("NoseSneer", "noseSneer") + _sides("MouthLowerDown", "mouthLowerDown")
    t += [_p("MouthUpperLeft", "mouthLeft"), _p("MouthUpperRight", "mouthRight")]
    t += [_p("MouthLowerLeft", "mouthLeft"), _p("MouthLowerRight", "mouthRight")]
    t += _sides("MouthCornerPull", "mouthSmile") + _sides("MouthCornerSlant", "mouthSmile")
    t += _sides("MouthFrown", "mouthFrown") + _sides("MouthStretch", "mouthStretch")
    t += _sides("MouthDimple", "mouthDimple")
    t += [_p("MouthRaiserUpper", "mouthShrugUpper"), _p("MouthRaiserLower", "mouthShrugLower")]
    t += _sides("MouthPress", "mouthPress") + [_p("TongueOut", "tongueOut")]
    # --- simplified shapes (UnifiedSimpleExpressions)
    for s in ("Left", "Right"):
        t.append(_p(f"BrowUp{s}", (f"browOuterUp{s}", 0.6), ("browInnerUp", 0.4)))
        t.append(_p(f"BrowDown{s}", f"browDown{s}"))  # .75 lowerer + .25 pinch, both browDown
        t.append(_p(f"MouthSmile{s}", f"mouthSmile{s}"))  # .8 pull + .2 slant, both mouthSmile
        t.append(_p(f"MouthSad{s}", maxes=((1.0, f"mouthFrown{s}", f"mouthStretch{s}"),)))
    # --- eyes (UnifiedExpressionsParameters, eye region)
    for s in ("Left", "Right"):
        t.append(_p(f"EyeClosed{s}", f"eyeBlink{s}"))
        t.append(_p(f"EyeOpen{s}", (f"eyeBlink{s}", -1.0), bias=1.0))
        t.append(_p(f"EyeLid{s}", (f"eyeBlink{s}", -0.75), (f"eyeWide{s}", 0.25), bias=0.75))
    t.append(_mean("EyeClosed", "eyeBlinkLeft", "eyeBlinkRight"))
    t.append(_p("EyeOpen", ("eyeBlinkLeft", -0.5), ("eyeBlinkRight", -0.5), bias=1.0))
    t.append(_p("EyeLid", ("eyeBlinkLeft", -0.375), ("eyeBlinkRight", -0.375),
                ("eyeWideLeft", 0.125), ("eyeWideRight", 0.125), bias=0.75))  # fmt: skip
    t.append(_p("EyeWide", maxes=((1.0, "eyeWideLeft", "eyeWideRight"),)))
    t.append(_p("EyeSquint", maxes=((1.0, "eyeSquintLeft", "eyeSquintRight"),)))
    t.append(_p("EyesSquint", maxes=((1.0, "eyeSquintLeft", "eyeSquintRight"),)))
    # gaze: +X = the performer's right, +Y = up
    t.append(_p("EyeLeftX", "eyeLookInLeft", ("eyeLookOutLeft", -1.0)))
    t.append(_p("EyeLeftY", "eyeLookUpLeft", ("eyeLookDownLeft", -1.0)))
    t.append(_p("EyeRightX", "eyeLookOutRight", ("eyeLookInRight", -1.0)))
    t.append(_p("EyeRightY", "eyeLookUpRight", ("eyeLookDownRight", -1.0)))
    t.append(_p("EyeX", ("eyeLookInLeft", 0.5), ("eyeLookOutLeft", -0.5),
                ("eyeLookOutRight", 0.5), ("eyeLookInRight", -0.5)))  # fmt: skip
    t.append(_p("EyeY", ("eyeLookUpLeft", 0.5), ("eyeLookDownLeft", -0.5),
                ("eyeLookUpRight", 0.5), ("eyeLookDownRight", -0.5)))  # fmt: skip
    # --- brows combined
    t.append(_p("BrowUp", ("browOuterUpLeft", 0.3), ("browOuterUpRight", 0.3), ("browInnerUp", 0.4)))
    t.append(_mean("BrowDown", "browDownLeft", "browDownRight"))
    t.append(_p("BrowInnerUp", "browInnerUp"))
    t.append(_mean("BrowOuterUp", "browOuterUpLeft", "browOuterUpRight"))
    for s in ("Left", "Right"):  # -1 = angry, +1 = worried
        t.append(_p(f"BrowExpression{s}", ("browInnerUp", 0.5), (f"browOuterUp{s}", 0.5),
                    (f"browDown{s}", -1.0)))  # fmt: skip
    t.append(_p("BrowExpression", ("browInnerUp", 0.5), ("browOuterUpLeft", 0.25),
                ("browOuterUpRight", 0.25), ("browDownLeft", -0.5), ("browDownRight", -0.5)))  # fmt: skip
    # --- jaw, cheeks, mouth direction
    t.append(_p("JawX", "jawRight", ("jawLeft", -1.0)))
    t.append(_p("JawZ", "jawForward"))
    t.append(_mean("CheekSquint", "cheekSquintLeft", "cheekSquintRight"))
    t += [_p("CheekPuffSuckLeft", "cheekPuff"), _p("CheekPuffSuckRight", "cheekPuff")]
    t.append(_p("CheekPuffSuck", "cheekPuff"))
    for name in ("MouthUpperX", "MouthLowerX", "MouthX"):
        t.append(_p(name, "mouthRight", ("mouthLeft", -1.0)))
    # --- lips combined
    t += [_p("LipSuckUpper", "mouthRollUpper"), _p("LipSuckLower", "mouthRollLower")]
    t.append(_mean("LipSuck", "mouthRollUpper", "mouthRollLower"))
    for name in ("LipFunnelUpper", "LipFunnelLower", "LipFunnel"):
        t.append(_p(name, "mouthFunnel"))
    for name in ("LipPuckerUpper", "LipPuckerLower", "LipPuckerLeft", "LipPuckerRight", "LipPucker"):
        t.append(_p(name, "mouthPucker"))
    for part, roll in (("Upper", "mouthRollUpper"), ("Lower", "mouthRollLower")):
        t.append(_p(f"LipSuckFunnel{part}", roll, ("mouthFunnel", -1.0)))
        for s in ("Left", "Right"):
            t.append(_p(f"LipSuckFunnel{part}{s}", roll, ("mouthFunnel", -1.0)))
    # --- mouth combined (no ARKit source for MouthTightener: it counts as 0)
    t.append(_mean("MouthUpperUp", "mouthUpperUpLeft", "mouthUpperUpRight"))
    t.append(_mean("MouthLowerDown", "mouthLowerDownLeft", "mouthLowerDownRight"))
    t.append(_p("MouthOpen", *((n, 0.25) for n in ("mouthUpperUpLeft", "mouthUpperUpRight",
                                                  "mouthLowerDownLeft", "mouthLowerDownRight"))))  # fmt: skip
    t.append(_mean("MouthStretch", "mouthStretchLeft", "mouthStretchRight"))
    t.append(_mean("MouthPress", "mouthPressLeft", "mouthPressRight"))
    t.append(_mean("MouthDimple", "mouthDimpleLeft", "mouthDimpleRight"))
    t.append(_mean("NoseSneer", "noseSneerLeft", "noseSneerRight"))
    t.append(_p("MouthTightenerStretch", ("mouthStretchLeft", -0.5), ("mouthStretchRight", -0.5)))
    for s in ("Left", "Right"):
        t.append(_p(f"MouthTightenerStretch{s}", (f"mouthStretch{s}", -1.0)))
    # --- lip corners combined
    for s in ("Left", "Right"):
        t.append(_p(f"MouthCornerY{s}", f"mouthSmile{s}", (f"mouthFrown{s}", -1.0)))
        t.append(_p(f"SmileFrown{s}", f"mouthSmile{s}", (f"mouthFrown{s}", -1.0)))
        t.append(_p(f"SmileSad{s}", f"mouthSmile{s}",
                    maxes=((-1.0, f"mouthFrown{s}", f"mouthStretch{s}"),)))  # fmt: skip
    both = (("mouthSmileLeft", 0.5), ("mouthSmileRight", 0.5))
    both += (("mouthFrownLeft", -0.5), ("mouthFrownRight", -0.5))
    t.append(_p("MouthCornerY", *both))
    t.append(_p("SmileFrown", *both))
    t.append(_p("SmileSad", ("mouthSmileLeft", 0.5), ("mouthSmileRight", 0.5),
                maxes=((-0.5, "mouthFrownLeft", "mouthStretchLeft"),
                       (-0.5, "mouthFrownRight", "mouthStretchRight"))))  # fmt: skip
    return tuple(t)


#: Every v2 parameter the bridge can derive from ARKit, in the order it sends them.
UNIFIED_PARAMS: tuple[UnifiedParam, ...] = _table()
UNIFIED_NAMES: tuple[str, ...] = tuple(p.name for p in UNIFIED_PARAMS)
_BY_NAME = {p.name: p for p in UNIFIED_PARAMS}
_FOLDED = {n.lower(): n for n in UNIFIED_NAMES}

#: v2 names VRCFT defines that ARKit cannot drive (no source shape): refused by name, with why.
UNIFIED_WITHOUT_ARKIT_SOURCE: tuple[str, ...] = (
    "JawBackward", "JawClench", "JawMandibleRaise",
    "NasalDilationRight", "NasalDilationLeft", "NasalConstrictRight", "NasalConstrictLeft",
    "CheekSuckRight", "CheekSuckLeft", "CheekSuck", "LipSuckCornerRight", "LipSuckCornerLeft",
    "MouthTightenerRight", "MouthTightenerLeft", "MouthTightener",
    "TongueUp", "TongueDown", "TongueRight", "TongueLeft", "TongueRoll", "TongueBendDown",
    "TongueCurlUp", "TongueSquish", "TongueFlat", "TongueTwistRight", "TongueTwistLeft",
    "TongueX", "TongueY", "TongueArchY", "TongueShape",
    "SoftPalateClose", "ThroatSwallow", "NeckFlexRight", "NeckFlexLeft",
    "PupilDilation", "PupilDiameterLeft", "PupilDiameterRight", "PupilDiameter",
    "EyeTrackingActive", "ExpressionTrackingActive", "LipTrackingActive",
)  # fmt: skip

assert len(set(UNIFIED_NAMES)) == len(UNIFIED_NAMES), "duplicate Unified Expressions name"
assert not set(UNIFIED_NAMES) & set(UNIFIED_WITHOUT_ARKIT_SOURCE)


def unified_name(name: str) -> str:
    """The canonical spelling of a v2 name the bridge can send (case-insensitive, an
    optional ``v2/`` in front); a one-line BridgeError naming the closest ones otherwise."""
    bare = name.removeprefix(UNIFIED_PREFIX)
    found = _FOLDED.get(bare.lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(bare, UNIFIED_NAMES, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    if bare in UNIFIED_WITHOUT_ARKIT_SOURCE:
        raise BridgeError(
            f"Unified Expressions name {name!r} has no ARKit source, so the bridge cannot send it{hint}"
        )
    raise BridgeError(f"unknown Unified Expressions name {name!r}{hint}")


MaxTerm = tuple[int, float, int, int]


def unified_matrix(names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, list[MaxTerm]]:
    """``(M, bias, maxes)`` with ``out = M @ arkit + bias`` plus, for each
    ``(row, coef, a, b)``, ``out[row] += coef * max(arkit[a], arkit[b])``."""
    index = {n: i for i, n in enumerate(ARKIT_NAMES)}
    m = np.zeros((len(names), NUM_BLENDSHAPES), dtype=np.float32)
    bias = np.zeros(len(names), dtype=np.float32)
    maxes: list[MaxTerm] = []
    for row, name in enumerate(names):
        p = _BY_NAME[name]
        for arkit, w in p.terms:
            m[row, index[arkit]] += w
        bias[row] = p.bias
        maxes += [(row, c, index[a], index[b]) for c, a, b in p.maxes]
    return m, bias, maxes


def unified_param(name: str) -> UnifiedParam:
    return _BY_NAME[name]
