"""iFacialMocap's UDP text, which VSeeFace, VNyan, Warudo and other VTuber apps read as
"iPhone tracking" (default port 49983).

One datagram per frame, ASCII::

    hapihapi-0|eyeBlink_L-37|eyeLookDown_L-0|...|tongueOut-0|=head#P,Y,R,X,Y,Z|rightEye#P,Y,R|leftEye#P,Y,R|

* ``hapihapi-0`` first: a field the app itself sends that is no blendshape.  A reader that
  drops the first field (VRCFaceTracking's iFacialMocap module takes ``Split('|')[1..^1]``)
  still gets all 52 shapes, and the others skip a name they do not know.
* 52 fields ``<name>-<int 0..100>`` separated by ``|``: the ARKit weight times 100, rounded
  and clamped.  Names are ARKit's with a trailing ``Left``/``Right`` written ``_L``/``_R``
  (``eyeBlink_L``, ``mouthSmile_R``, ``browOuterUp_L``), except ``jawLeft``,
  ``jawRight``, ``mouthLeft`` and ``mouthRight``, which the app keeps whole (they are
  directions, not sides).  Receivers look fields up by name; the order is Epic's.
* ``=head#`` pitch, yaw, roll in degrees, then the head position x, y, z (sent as 0: an
  audio model has none); ``rightEye#`` and ``leftEye#`` pitch, yaw, roll in degrees.  The
  angles are the Live Link head/eye values times 180 (zero unless a stage sets them).

That is the app's original ("v1") format.  ``version = "v2"`` writes ``name&value``
instead (``hapihapi&0|eyeBlink_L&37|...``): what a receiver gets when its start string
asks for ``sendDataVersion=v2``; the rest is identical.  Who gets which version is
:mod:`bridge.outputs.ifacialmocap_phone`'s business.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from bridge.blendshapes import ARKIT_NAMES, LIVELINK_NAMES, NUM_BLENDSHAPES, mirror_permutation
from bridge.frame import FaceFrame

IFacialMocapVersion = Literal["v1", "v2"]
#: The separator between a name and its value, per version.
SEPARATORS: dict[str, str] = {"v1": "-", "v2": "&"}
#: The app's own non-blendshape field, sent first (readers that drop field 0 lose nothing).
LEAD_FIELD = "hapihapi"

#: Names iFacialMocap keeps whole although they end in Left/Right.
_DIRECTIONS = frozenset({"jawLeft", "jawRight", "mouthLeft", "mouthRight"})


def ifacialmocap_name(arkit: str) -> str:
    """``eyeBlinkLeft`` -> ``eyeBlink_L``, ``jawLeft`` -> ``jawLeft``."""
    if arkit in _DIRECTIONS:
        return arkit
    if arkit.endswith("Left"):
        return arkit[:-4] + "_L"
    if arkit.endswith("Right"):
        return arkit[:-5] + "_R"
    return arkit


#: The 52 names as iFacialMocap spells them, in Epic's order.
IFACIALMOCAP_NAMES: tuple[str, ...] = tuple(ifacialmocap_name(n) for n in ARKIT_NAMES)

#: Live Link head/eye value index (into FaceFrame.head) for each angle the text carries.
_HEAD = (1, 0, 2)  # HeadPitch, HeadYaw, HeadRoll
_RIGHT_EYE = (7, 6, 8)  # RightEyePitch, RightEyeYaw, RightEyeRoll
_LEFT_EYE = (4, 3, 5)  # LeftEyePitch, LeftEyeYaw, LeftEyeRoll


class IFacialMocapEncoder:
    """FaceFrame -> one iFacialMocap text datagram (ASCII bytes), ``v1`` or ``v2``.

    Built from a %-template whose names and separators are constant.  ``mirror`` swaps
    every Left/Right value, eye rotations included.
    """

    def __init__(self, mirror: bool = False, version: IFacialMocapVersion = "v1") -> None:
        if version not in SEPARATORS:
            raise ValueError(f"iFacialMocap version {version!r}; allowed: v1, v2")
        self.mirror = mirror
        self.version = version
        sep = SEPARATORS[version]
        shapes = "|".join(f"{n}{sep}%d" for n in IFACIALMOCAP_NAMES)
        angles = ",".join(["%.4f"] * 3)
        bones = f"=head#{angles},0.0000,0.0000,0.0000|rightEye#{angles}|leftEye#{angles}|"
        self._template = f"{LEAD_FIELD}{sep}0|{shapes}|{bones}".encode("ascii")
        perm = mirror_permutation(LIVELINK_NAMES) if mirror else np.arange(len(LIVELINK_NAMES))
        self._shape_src = perm[:NUM_BLENDSHAPES]
        head_perm = perm[NUM_BLENDSHAPES:] - NUM_BLENDSHAPES
        self._angle_src = head_perm[list(_HEAD + _RIGHT_EYE + _LEFT_EYE)]
        # Per-frame work in these buffers (float64, as the percentages were always rounded in).
        self._scaled = np.zeros(NUM_BLENDSHAPES, dtype=np.float64)
        self._degrees = np.zeros(len(head_perm), dtype=np.float64)
        self._shapes = np.zeros(NUM_BLENDSHAPES, dtype=np.float64)
        self._ints = np.zeros(NUM_BLENDSHAPES, dtype=np.int64)
        self._angles = np.zeros(len(self._angle_src), dtype=np.float64)

    def encode(self, frame: FaceFrame) -> bytes:
        """The datagram for ``frame``: each weight times 100, rounded half to even and clamped
        to 0..100 (NaN as 0); angles in degrees with 4 decimals (NaN as 0, +-inf as +-max)."""
        shapes = self._shapes
        np.multiply(frame.values, 100.0, out=self._scaled, dtype=np.float64)  # in float64, as always
        np.take(self._scaled, self._shape_src, out=shapes)
        np.fmax(shapes, 0.0, out=shapes)  # fmax/fmin pick the number over a NaN: NaN -> 0
        np.fmin(shapes, 100.0, out=shapes)
        np.rint(shapes, out=self._ints, casting="unsafe")
        angles = self._angles
        np.multiply(frame.head, 180.0, out=self._degrees, dtype=np.float64)
        np.take(self._degrees, self._angle_src, out=angles)
        deg = angles.tolist()
        if not math.isfinite(sum(deg)):  # rare: a non-finite angle, or a sum past float64
            deg = np.nan_to_num(angles).tolist()
        return self._template % (*self._ints.tolist(), *deg)

    def encode_view(self, frame: FaceFrame) -> memoryview:
        return memoryview(self.encode(frame))
