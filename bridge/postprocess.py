"""Post-processing between the model and the outputs.

Stages work in place on a block of frames ``(n, 52)`` in canonical order and
keep whatever state they need between calls (they are causal: a frame never
waits for a later one unless a stage says so).  ``--raw`` replaces the chain
with an empty one.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from bridge.config import PostConfig


class Stage(Protocol):
    """One causal post-processing step."""

    #: frames of delay this stage adds (documented per stage)
    delay_frames: int

    def process(self, values: np.ndarray) -> None:
        """Transform ``values`` (frames x 52) in place."""
        ...


class Clamp:
    """Keep every weight in [0, 1], the range every receiver expects."""

    delay_frames = 0

    def process(self, values: np.ndarray) -> None:
        np.clip(values, 0.0, 1.0, out=values)


class PostChain:
    """The configured stages, run in order."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    @property
    def delay_frames(self) -> int:
        return sum(s.delay_frames for s in self.stages)

    def process(self, values: np.ndarray) -> None:
        for stage in self.stages:
            stage.process(values)


def build_post_chain(cfg: PostConfig, raw: bool = False) -> PostChain:
    if raw:
        return PostChain([])
    stages: list[Stage] = []
    if cfg.clamp:
        stages.append(Clamp())
    return PostChain(stages)
