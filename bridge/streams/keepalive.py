"""Frames for while the input is lost: ease the face to rest and hold it there.

Receivers keep showing the last packet they got, so a capture device that goes
away mid-word would leave the face frozen with its mouth open.  While the input
is lost the hop loop keeps sending frames at 30 fps from :class:`RestPose`: the
last published values eased to rest (all weights and head angles 0, the pose the
post chain gives silence) over ``EASE_S`` with a smoothstep, then held there.
The frames take the next frame numbers, so receivers see one unbroken sequence.
"""

from __future__ import annotations

import numpy as np

from bridge.blendshapes import HEAD_EYE_NAMES, NUM_BLENDSHAPES

#: how long the face takes to ease from its last pose to rest
EASE_S = 0.5


class RestPose:
    """The last published pose, and the way from it to rest (no allocation per frame)."""

    def __init__(self) -> None:
        self.values = np.zeros(NUM_BLENDSHAPES, dtype=np.float32)  #: last published weights
        self.head = np.zeros(len(HEAD_EYE_NAMES), dtype=np.float32)  #: last published head values
        self._from_values = np.zeros_like(self.values)
        self._from_head = np.zeros_like(self.head)
        self._out_values = np.zeros_like(self.values)
        self._out_head = np.zeros_like(self.head)

    def remember(self, values: np.ndarray, head: np.ndarray) -> None:
        """Keep the pose just published (the start of the ease, should the input be lost)."""
        np.copyto(self.values, values)
        np.copyto(self.head, head)

    def start(self) -> None:
        """The input is lost now: ease from the last published pose."""
        np.copyto(self._from_values, self.values)
        np.copyto(self._from_head, self.head)

    def at(self, seconds: float) -> tuple[np.ndarray, np.ndarray]:
        """The pose ``seconds`` after :meth:`start` (views, valid until the next call)."""
        x = min(max(seconds / EASE_S, 0.0), 1.0)
        weight = np.float32(1.0 - x * x * (3.0 - 2.0 * x))  # 1 - smoothstep: no jump at either end
        np.multiply(self._from_values, weight, out=self._out_values)
        np.multiply(self._from_head, weight, out=self._out_head)
        return self._out_values, self._out_head


def share_rest_poses(poses: list[RestPose]) -> tuple[np.ndarray, np.ndarray]:
    """Make each pose's last published values and head rows of two ``[P, ...]`` arrays (which
    are returned), so a block's poses are remembered with one copy for all performers."""
    values = np.zeros((len(poses), NUM_BLENDSHAPES), dtype=np.float32)
    head = np.zeros((len(poses), len(HEAD_EYE_NAMES)), dtype=np.float32)
    for i, pose in enumerate(poses):
        values[i], head[i] = pose.values, pose.head
        pose.values, pose.head = values[i], head[i]
    return values, head
