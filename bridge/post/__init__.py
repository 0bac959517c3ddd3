"""Post-processing between the model and the outputs.

Stages (bridge/post/*.py) follow the :class:`~bridge.post.base.Stage` contract;
``build_post_chain`` assembles the configured ones, in this order:

    calibration -> smoothing -> silence gate -> blinks -> symmetrize -> curve -> clamp

Calibration first, so every later stage sees 0 as rest; the gate after the
smoothing, so its release ramp is exact (a low-pass after it would stretch it);
blinks after both, so their shape is neither smoothed nor gated; the curve and
the clamp last, as the user's final say.  ``--raw`` replaces the chain with an
empty one.  Every stage states its delay (docs/postprocessing.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from bridge.post.base import FrameContext, Stage

if TYPE_CHECKING:  # config.py imports stage settings from this package: no cycle at run time
    from bridge.config import PostConfig

_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


class Clamp:
    """Keep every weight in [0, 1], the range every receiver expects (a NaN becomes 0)."""

    delay_frames = 0

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        # two ufuncs with float32 scalars: a third of np.clip's per-call overhead on one frame;
        # fmax/fmin rather than maximum/minimum because they drop a NaN instead of keeping it
        np.fmax(values, _ZERO, out=values)
        np.fmin(values, _ONE, out=values)


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

    def restart(self) -> None:
        """The input was lost and the face eased to rest: stages that carry the last pose
        forward (the smoothers) start afresh, so the first frame back does not blend with
        the pose from before the loss."""
        for stage in self.stages:
            restart = getattr(stage, "restart", None)
            if restart is not None:
                restart()

    def describe(self) -> str:
        """One line for logs: the stages and the delay they add."""
        names = ", ".join(type(s).__name__ for s in self.stages) or "none (raw)"
        return f"post: {names}; delay {self.delay_frames} frame(s)"


def build_post_chain(cfg: PostConfig, raw: bool = False) -> PostChain:
    """The stages ``cfg`` switches on (none with ``raw``); bad settings raise BridgeError."""
    if raw:
        return PostChain([])
    from bridge.post.blink import Blinks
    from bridge.post.calibration import Calibration
    from bridge.post.gate import SilenceGate
    from bridge.post.shape import Curve, Symmetrize
    from bridge.post.smoothing import Ema, OneEuro

    stages: list[Stage] = []
    if cfg.calibration:
        stages.append(Calibration.from_file(cfg.calibration, rescale=cfg.calibration_rescale))
    sm = cfg.smoothing
    if sm.kind == "one_euro":
        stages.append(OneEuro(sm.min_cutoff, sm.beta, sm.d_cutoff))
    elif sm.kind == "ema":
        stages.append(Ema(sm.alpha))
    g = cfg.gate
    if g.enabled:
        stages.append(
            SilenceGate(open_db=g.open_db, close_db=g.close_db, hold_frames=g.hold_frames,
                        attack_frames=g.attack_frames, release_frames=g.release_frames,
                        floor=g.floor, channels=g.channels, vad=g.vad,
                        vad_threshold=g.vad_threshold, vad_model=g.vad_model)
        )  # fmt: skip
    b = cfg.blink
    if b.enabled:
        if b.max_interval_s < b.min_interval_s:
            from bridge.errors import BridgeError

            raise BridgeError(
                f"post.blink.max_interval_s ({b.max_interval_s}) must be >= "
                f"post.blink.min_interval_s ({b.min_interval_s})"
            )
        stages.append(Blinks(min_interval_s=b.min_interval_s, max_interval_s=b.max_interval_s,
                             strength=b.strength, replace_model=b.replace_model, seed=b.seed))  # fmt: skip
    if cfg.symmetrize != "off":
        stages.append(Symmetrize(cfg.symmetrize))
    curve = Curve(cfg.curve.gain, cfg.curve.offset, cfg.curve.gamma)
    if not curve.identity:
        stages.append(curve)
    if cfg.head.enabled:
        from bridge.post.head import HeadMotion

        stages.append(HeadMotion(cfg.head))
    if cfg.clamp:
        stages.append(Clamp())
    return PostChain(stages)


__all__ = ["Clamp", "FrameContext", "PostChain", "Stage", "build_post_chain"]
