"""Post-processing between the model and the outputs.

Stages (bridge/post/*.py) follow the :class:`~bridge.post.base.Stage` contract;
``build_post_chain`` assembles the configured ones.  ``--raw`` replaces the
chain with an empty one.
"""

from __future__ import annotations

import numpy as np

from bridge.config import PostConfig
from bridge.post.base import FrameContext, Stage


class Clamp:
    """Keep every weight in [0, 1], the range every receiver expects."""

    delay_frames = 0

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        np.clip(values, 0.0, 1.0, out=values)


class PostChain:
    """The configured stages, run in order."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    @property
    def delay_frames(self) -> int:
        return sum(s.delay_frames for s in self.stages)

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        for stage in self.stages:
            stage.process(values, ctx)


def build_post_chain(cfg: PostConfig, raw: bool = False) -> PostChain:
    if raw:
        return PostChain([])
    stages: list[Stage] = []
    if cfg.clamp:
        stages.append(Clamp())
    return PostChain(stages)


__all__ = ["Clamp", "FrameContext", "PostChain", "Stage", "build_post_chain"]
