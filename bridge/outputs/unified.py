"""ARKit -> VRCFaceTracking Unified Expressions v2, as the VRChat output sends them.

VRCFaceTracking (VRCFT) drives VRChat avatars through avatar parameters named
``v2/<Name>``.  Its names come in three families (VRCFT source,
``VRCFaceTracking.Core/Params/Expressions``): the base shapes (``UnifiedExpressions``
enum: ``JawOpen``, ``MouthCornerPullLeft``, ...), the simplified shapes
(``UnifiedSimpleExpressions``: ``BrowUpLeft``, ``MouthSmileLeft``, ...) and the combined
parameters (``UnifiedExpressionsParameters``: ``JawX``, ``MouthX``, ``SmileFrownLeft``,
``EyeLidLeft``, ...).  The base shapes are filled from ARKit the way VRCFT's own Live Link
module does (``ArKitPacketReader.cs``); the simplified and combined ones are then computed
with VRCFT's formulas, so an avatar looks the same fed by the bridge directly or by VRCFT
reading the bridge's Live Link packets.

That module is not a plain mapping in three places, which become the :data:`FEATURES`
here, computed per frame before the (linear) table:

* eye openness ``openLeft = 1 - clamp(eyeBlinkLeft * (1 + eyeSquintLeft), 0, 1)``, from
  which ``EyeOpen*``, ``EyeClosed*`` and ``EyeLid*`` follow;
* the upper lip suck ``suckUpperLeft = min(mouthRollUpper, 1 - mouthUpperUpLeft ** (1/6))``;
* gaze from the eye angles of the Live Link packet, not from the ``eyeLook*`` shapes:
  ``gazeLeftX = LeftEyeYaw``, ``gazeLeftY = -LeftEyePitch`` (degrees / 180, as sent).

Every parameter is then ``bias + sum(weight * source) + sum(coef * max(arkit_a, arkit_b))``
over the 52 ARKit weights and those features: :class:`UnifiedMap` evaluates it per frame.
``Left`` is the performer's left, as in ARKit and VRCFT; X axes are positive to the
performer's right.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.errors import BridgeError

#: VRCFT's default parameter prefix for Unified Expressions (``/avatar/parameters/v2/...``).
UNIFIED_PREFIX = "v2/"

Terms = tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Feature:
    """A per-frame input of VRCFT's Live Link module that is not a plain ARKit weight."""

    name: str
    formula: str  #: how VRCFT computes it (docs)
    plain: Terms  #: the plain ARKit mapping it replaces (what :func:`unified_matrix` uses)
    plain_bias: float = 0.0
    range: tuple[float, float] = (0.0, 1.0)


def _feature_table() -> tuple[Feature, ...]:
    out = []
    for s in ("Left", "Right"):
        out.append(Feature(f"open{s}", f"1 - clamp(eyeBlink{s}·(1 + eyeSquint{s}), 0, 1)",
                           ((f"eyeBlink{s}", -1.0),), 1.0))  # fmt: skip
    for s in ("Left", "Right"):
        out.append(Feature(f"suckUpper{s}", f"min(mouthRollUpper, 1 - mouthUpperUp{s}^(1/6))",
                           (("mouthRollUpper", 1.0),)))  # fmt: skip
    eye_in_out = {"Left": ("eyeLookInLeft", "eyeLookOutLeft"), "Right": ("eyeLookOutRight", "eyeLookInRight")}
    for s in ("Left", "Right"):
        toward_right, toward_left = eye_in_out[s]
        out.append(Feature(f"gaze{s}X", f"{s}EyeYaw", ((toward_right, 1.0), (toward_left, -1.0)),
                           range=(-1.0, 1.0)))  # fmt: skip
        out.append(Feature(f"gaze{s}Y", f"-{s}EyePitch", ((f"eyeLookUp{s}", 1.0), (f"eyeLookDown{s}", -1.0)),
                           range=(-1.0, 1.0)))  # fmt: skip
    return tuple(out)


#: VRCFT's non-plain inputs, in the order :class:`UnifiedMap` computes them.
FEATURES: tuple[Feature, ...] = _feature_table()
_FEATURE = {f.name: f for f in FEATURES}
# UnifiedMap._fill_features writes them in this order.
assert list(_FEATURE) == ["openLeft", "openRight", "suckUpperLeft", "suckUpperRight",
                          "gazeLeftX", "gazeLeftY", "gazeRightX", "gazeRightY"]  # fmt: skip
#: Everything a parameter can be built from: the 52 ARKit weights, then the features.
SOURCE_NAMES: tuple[str, ...] = ARKIT_NAMES + tuple(f.name for f in FEATURES)
_SOURCE_INDEX = {n: i for i, n in enumerate(SOURCE_NAMES)}


def _fmt_terms(bias: float, terms: Terms, maxes: tuple[tuple[float, str, str], ...]) -> str:
    """``0.75·openLeft + 0.25·eyeWideLeft`` style text, bias first (docs table)."""
    parts: list[tuple[float, str]] = [(w, n) for n, w in terms]
    parts += [(c, f"max({a}, {b})") for c, a, b in maxes]
    text = f"{bias:g}" if bias else ""
    for w, n in parts:
        mag = "" if abs(w) == 1 else f"{abs(w):g}·"
        if not text:
            text = ("-" if w < 0 else "") + mag + n
        else:
            text += (" - " if w < 0 else " + ") + mag + n
    return text or "0"


@dataclass(frozen=True, slots=True)
class UnifiedParam:
    """One v2 parameter: ``offset + sum(weight * source) + sum(coef * max(arkit a, arkit b))``,
    a source being an ARKit weight or a :data:`FEATURES` name."""

    name: str
    sources: Terms
    offset: float = 0.0
    maxes: tuple[tuple[float, str, str], ...] = ()  #: (coef, arkit a, arkit b): coef * max(a, b)

    @property
    def formula(self) -> str:
        """VRCFT's formula as text (the docs/wire-formats.md table)."""
        return _fmt_terms(self.offset, self.sources, self.maxes)

    @property
    def terms(self) -> Terms:
        """The plain linear mapping over ARKit weights only (features replaced by the plain
        shapes they stand for, e.g. ``openLeft`` by ``1 - eyeBlinkLeft``)."""
        return self._plain()[1]

    @property
    def bias(self) -> float:
        """The constant of :attr:`terms`."""
        return self._plain()[0]

    def _plain(self) -> tuple[float, Terms]:
        bias, acc = self.offset, dict[str, float]()
        for n, w in self.sources:
            f = _FEATURE.get(n)
            for m, v in f.plain if f else ((n, 1.0),):
                acc[m] = acc.get(m, 0.0) + w * v
            bias += w * f.plain_bias if f else 0.0
        return bias, tuple((n, w) for n, w in acc.items() if w != 0.0)

    @property
    def range(self) -> tuple[float, float]:
        """Values it takes when every ARKit weight is in 0..1 and every eye angle in -1..1
        (e.g. -1..1 for JawX)."""
        lo = hi = self.offset
        for n, w in self.sources:
            a, b = _FEATURE[n].range if n in _FEATURE else (0.0, 1.0)
            lo, hi = lo + min(w * a, w * b), hi + max(w * a, w * b)
        for c, _, _ in self.maxes:
            lo, hi = lo + min(0.0, c), hi + max(0.0, c)
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
    t += _sides("LipSuckUpper", "suckUpper") + _both("LipSuckLower", "mouthRollLower")
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
    # --- eyes (UnifiedExpressionsParameters, eye region), from VRCFT's eye openness
    for s in ("Left", "Right"):
        t.append(_p(f"EyeClosed{s}", (f"open{s}", -1.0), bias=1.0))
        t.append(_p(f"EyeOpen{s}", f"open{s}"))
        t.append(_p(f"EyeLid{s}", (f"open{s}", 0.75), (f"eyeWide{s}", 0.25)))
    t.append(_p("EyeClosed", ("openLeft", -0.5), ("openRight", -0.5), bias=1.0))
    t.append(_mean("EyeOpen", "openLeft", "openRight"))
    t.append(_p("EyeLid", ("openLeft", 0.375), ("openRight", 0.375),
                ("eyeWideLeft", 0.125), ("eyeWideRight", 0.125)))  # fmt: skip
    t.append(_p("EyeWide", maxes=((1.0, "eyeWideLeft", "eyeWideRight"),)))
    t.append(_p("EyeSquint", maxes=((1.0, "eyeSquintLeft", "eyeSquintRight"),)))
    t.append(_p("EyesSquint", maxes=((1.0, "eyeSquintLeft", "eyeSquintRight"),)))
    # gaze, from the eye angles as VRCFT takes them: +X = the performer's right, +Y = up
    for s in ("Left", "Right"):
        t += [_p(f"Eye{s}X", f"gaze{s}X"), _p(f"Eye{s}Y", f"gaze{s}Y")]
    t += [_mean("EyeX", "gazeLeftX", "gazeRightX"), _mean("EyeY", "gazeLeftY", "gazeRightY")]
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
    t += [_mean("LipSuckUpper", "suckUpperLeft", "suckUpperRight"), _p("LipSuckLower", "mouthRollLower")]
    t.append(_p("LipSuck", ("suckUpperLeft", 0.25), ("suckUpperRight", 0.25), ("mouthRollLower", 0.5)))
    for name in ("LipFunnelUpper", "LipFunnelLower", "LipFunnel"):
        t.append(_p(name, "mouthFunnel"))
    for name in ("LipPuckerUpper", "LipPuckerLower", "LipPuckerLeft", "LipPuckerRight", "LipPucker"):
        t.append(_p(name, "mouthPucker"))
    t.append(_p("LipSuckFunnelUpper", ("suckUpperLeft", 0.5), ("suckUpperRight", 0.5), ("mouthFunnel", -1.0)))
    for s in ("Left", "Right"):
        t.append(_p(f"LipSuckFunnelUpper{s}", f"suckUpper{s}", ("mouthFunnel", -1.0)))
    t.append(_p("LipSuckFunnelLower", "mouthRollLower", ("mouthFunnel", -1.0)))
    for s in ("Left", "Right"):
        t.append(_p(f"LipSuckFunnelLower{s}", "mouthRollLower", ("mouthFunnel", -1.0)))
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
    """The plain linear mapping: ``(M, bias, maxes)`` with ``out = M @ arkit + bias`` plus, for
    each ``(row, coef, a, b)``, ``out[row] += coef * max(arkit[a], arkit[b])``.

    Over the 52 ARKit weights only, so each of VRCFT's :data:`FEATURES` is replaced by the
    plain shapes it stands for (``openLeft`` by ``1 - eyeBlinkLeft``, ``suckUpperLeft`` by
    ``mouthRollUpper``, gaze by ``eyeLook*``): not what VRCFT computes.  :class:`UnifiedMap`
    is VRCFT's.
    """
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


class UnifiedMap:
    """Frame -> the chosen v2 parameters, with VRCFT's Live Link formulas (:data:`FEATURES`).

    ``values`` are the 52 ARKit weights in canonical order and ``head`` the 9 Live Link head
    and eye values (degrees / 180), from which gaze is taken as VRCFT takes it (``None``:
    gaze 0).  ``mirror`` swaps every Left/Right weight and the two eyes, with their yaw
    negated (a mirrored face looks the other way), before anything is derived, so the signed
    axes change sign (``JawX``, ``EyeX``).  Pass the frame as it is: the map mirrors itself.
    The returned array is reused by the next call.
    """

    def __init__(self, names: tuple[str, ...] | list[str], mirror: bool = False) -> None:
        self.names = tuple(unified_name(n) for n in names)
        self.mirror = mirror
        m = np.zeros((len(self.names), len(SOURCE_NAMES)), dtype=np.float32)
        self._bias = np.zeros(len(self.names), dtype=np.float32)
        maxes: list[MaxTerm] = []
        for row, name in enumerate(self.names):
            p = _BY_NAME[name]
            for src, w in p.sources:
                m[row, _SOURCE_INDEX[src]] += w
            self._bias[row] = p.offset
            maxes += [(row, c, _SOURCE_INDEX[a], _SOURCE_INDEX[b]) for c, a, b in p.maxes]
        self._m = m
        self._max_rows = np.array([r for r, _, _, _ in maxes], dtype=np.intp)
        self._max_coef = np.array([c for _, c, _, _ in maxes], dtype=np.float32)
        self._max_a = np.array([a for _, _, a, _ in maxes], dtype=np.intp)
        self._max_b = np.array([b for _, _, _, b in maxes], dtype=np.intp)
        self._features = bool(m[:, NUM_BLENDSHAPES:].any())
        self._perm = mirror_permutation(ARKIT_NAMES) if mirror else None
        self._src = np.zeros(len(SOURCE_NAMES), dtype=np.float32)
        self._out = np.zeros(len(self.names), dtype=np.float32)
        at = _SOURCE_INDEX
        self._eye = [(at[f"eyeBlink{s}"], at[f"eyeSquint{s}"]) for s in ("Left", "Right")]
        self._lip = [at[f"mouthUpperUp{s}"] for s in ("Left", "Right")]
        self._roll_upper = at["mouthRollUpper"]

    def __call__(self, values: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
        src = self._src
        if self._perm is None:
            src[:NUM_BLENDSHAPES] = values
        else:
            np.take(values, self._perm, out=src[:NUM_BLENDSHAPES])
        if self._features:
            self._fill_features(src, head)
        np.matmul(self._m, src, out=self._out)
        self._out += self._bias
        if self._max_rows.size:
            peaks = np.maximum(src[self._max_a], src[self._max_b])
            np.add.at(self._out, self._max_rows, self._max_coef * peaks)
        return self._out

    def _fill_features(self, src: np.ndarray, head: np.ndarray | None) -> None:
        """VRCFT's eye openness, upper lip suck and gaze, into ``src[52:]`` (FEATURES order)."""
        k = NUM_BLENDSHAPES
        for i, (blink_at, squint_at) in enumerate(self._eye):
            blink = float(src[blink_at])
            src[k + i] = 1.0 - min(1.0, max(0.0, blink + blink * float(src[squint_at])))
        roll = float(src[self._roll_upper])
        for i, up_at in enumerate(self._lip):
            up = max(0.0, float(src[up_at]))  # a small negative weight would make the root NaN
            src[k + 2 + i] = min(1.0 - up ** (1.0 / 6.0), roll)
        if head is None:
            src[k + 4 :] = 0.0
            return
        # Live Link head order: HeadYaw, HeadPitch, HeadRoll, LeftEye yaw/pitch/roll, RightEye ...
        left_yaw, left_pitch = float(head[3]), float(head[4])
        right_yaw, right_pitch = float(head[6]), float(head[7])
        if self.mirror:  # the other eye, looking the other way
            left_yaw, left_pitch, right_yaw, right_pitch = -right_yaw, right_pitch, -left_yaw, left_pitch
        src[k + 4], src[k + 5] = left_yaw, -left_pitch
        src[k + 6], src[k + 7] = right_yaw, -right_pitch
