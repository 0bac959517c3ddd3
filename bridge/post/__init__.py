"""Post-processing between the model and the outputs, for one performer or many.

Stages (bridge/post/*.py) follow the :class:`~bridge.post.base.Stage` contract;
``build_post_chain`` assembles the configured ones, in this order:

    calibration -> smoothing -> silence gate -> blinks -> symmetrize -> curve -> head -> clamp

Calibration first, so every later stage sees 0 as rest; the gate after the
smoothing, so its release ramp is exact (a low-pass after it would stretch it);
blinks after both, so their shape is neither smoothed nor gated; the curve and
the clamp last, as the user's final say.  ``--raw`` replaces the chain with an
empty one.  Every stage states its delay (docs/postprocessing.md).

Several performers: ``build_post_chain(cfgs)`` takes one PostConfig per performer (the
``[post]`` table merged with its ``[performer.post]`` overrides) and builds one chain for
all of them.  Its ``process`` works on ``[P, F, 52]`` blocks with a batched
:class:`~bridge.post.base.FrameContext`; every stage keeps its state in arrays with a
leading performer axis and takes every numeric setting per performer.

Performers whose configurations switch on *different stages* (one smooths with One Euro,
another with an EMA; one symmetrizes, another not; one has a calibration file, another
none) cannot share a stage without doing every performer's work for all of them, or
"identity" settings that are not exact (an EMA with alpha 1 is not quite a copy in float,
a calibration with floor 0 still clips negatives, a clamp that is "off" still eats NaN).
So the rule is: **performers with the same stage list (:func:`structure_key`) share one
chain, with per-row settings; different stage lists get a chain each**.
:func:`group_by_structure` groups performers that way, and when a configuration has more
than one group ``build_post_chain`` returns a :class:`GroupedPostChain`, which has the
same interface and dispatches each batch's rows to their group's chain (a gather and a
scatter per group present in the batch; nothing extra when all share one structure, the
usual case).  Differences within a stage are per-row settings, not structure: smoothing
constants, gate thresholds and its VAD kind (off, CTC or Silero), blink timing and
strength, curve tables (a performer without one gets an exact identity), head motion
amplitudes.

Seeds (blinks, head motion) are per performer: performer ``i`` gets
:func:`~bridge.post.base.performer_seed` ``(seed, i)``, which for performer 0 is the seed
itself, so one performer behaves exactly as the single-stream bridge did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bridge.post.base import FrameContext, Stage, as_batch, performer_seed, stack

if TYPE_CHECKING:  # config.py imports stage settings from this package: no cycle at run time
    from bridge.config import PostConfig

_ZERO, _ONE = np.float32(0.0), np.float32(1.0)


class Clamp:
    """Keep every weight in [0, 1], the range every receiver expects (a NaN becomes 0)."""

    delay_frames = 0

    def process(self, values: np.ndarray, ctx: FrameContext | None) -> None:
        # two ufuncs with float32 scalars: a third of np.clip's per-call overhead on one frame;
        # fmax/fmin rather than maximum/minimum because they drop a NaN instead of keeping it
        np.fmax(values, _ZERO, out=values)
        np.fmin(values, _ONE, out=values)


class PostChain:
    """The configured stages, run in order, for ``performers`` performers of one structure."""

    def __init__(self, stages: list[Stage], performers: int = 1) -> None:
        self.stages = stages
        self.performers = performers

    @property
    def delays(self) -> np.ndarray:
        """Frames of delay per performer (int ``[N]``)."""
        total = np.zeros(self.performers, dtype=np.int64)
        for s in self.stages:
            total += getattr(s, "delays", s.delay_frames)
        return total

    @property
    def delay_frames(self) -> int:
        """The largest delay of any performer (the only one, for one)."""
        return int(self.delays.max()) if self.performers else 0

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        """``values`` ``[P, F, 52]`` with a batched ``ctx`` (or ``[F, 52]`` and an unbatched one),
        in place."""
        values, bctx = as_batch(values, ctx)
        for stage in self.stages:
            stage.process(values, bctx)  # type: ignore[arg-type]

    def restart(self, rows: np.ndarray | None = None) -> None:
        """The input of ``rows`` (every performer: None) was lost and their faces eased to rest:
        stages that carry the last pose forward (the smoothers) start those performers afresh,
        so the first frame back does not blend with the pose from before the loss."""
        for stage in self.stages:
            restart = getattr(stage, "restart", None)
            if restart is not None:
                restart(rows)

    def find(self, kind: type, performer: int) -> tuple[Any, int] | None:
        """The stage of type ``kind`` that processes ``performer``, and the performer's row in
        it (for live settings: the console's commands); None if its chain has no such stage."""
        for stage in self.stages:
            if isinstance(stage, kind):
                return stage, performer
        return None

    def describe(self) -> str:
        """One line for logs: the stages and the delay they add."""
        names = ", ".join(type(s).__name__ for s in self.stages) or "none (raw)"
        return f"post: {names}; delay {self.delay_frames} frame(s)"


class GroupedPostChain(PostChain):
    """Performers of different structures: one :class:`PostChain` per group, same interface.

    ``groups``: each group's performer indices (ascending) and its chain, built for them in
    that order."""

    def __init__(self, groups: list[tuple[list[int], PostChain]], performers: int) -> None:
        #: every group's stages (for inspection; :meth:`process` runs each group's own chain)
        super().__init__([s for _m, c in groups for s in c.stages], performers)
        self.groups = groups
        self._group_of = np.full(performers, -1, dtype=np.intp)  # group of each performer
        self._local = np.zeros(performers, dtype=np.intp)  # its row in its group's chain
        for g, (members, _chain) in enumerate(groups):
            self._group_of[members] = g
            self._local[members] = np.arange(len(members))
        if (self._group_of < 0).any():
            raise ValueError("every performer must be in one group")
        self._all = np.arange(performers, dtype=np.intp)

    @property
    def delays(self) -> np.ndarray:
        out = np.zeros(self.performers, dtype=np.int64)
        for members, chain in self.groups:
            out[members] = chain.delays
        return out

    @property
    def delay_frames(self) -> int:
        return int(self.delays.max())

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        values, bctx = as_batch(values, ctx)
        assert bctx is not None
        rows = self._all if bctx.rows is None else bctx.rows
        group = self._group_of[rows]
        for g, (_members, chain) in enumerate(self.groups):
            sel = np.flatnonzero(group == g)
            if sel.size == 0:
                continue
            local = self._local[rows[sel]]
            if sel.size == values.shape[0]:  # the whole batch is of this group: no copies
                whole = local.size == chain.performers and bool((local == self._all[: local.size]).all())
                sub_ctx = FrameContext(bctx.first_frame, bctx.rms, bctx.speech_prob, bctx.head, bctx.audio,
                                       None if whole else local)  # fmt: skip
                chain.process(values, sub_ctx)
                continue
            sub = values[sel]
            sub_ctx = bctx.select(sel, local)
            chain.process(sub, sub_ctx)
            values[sel] = sub
            if bctx.head is not None:
                bctx.head[sel] = sub_ctx.head

    def restart(self, rows: np.ndarray | None = None) -> None:
        rows = self._all if rows is None else np.asarray(rows, dtype=np.intp)
        group = self._group_of[rows]
        for g, (_members, chain) in enumerate(self.groups):
            sel = rows[group == g]
            if sel.size:
                chain.restart(self._local[sel])

    def find(self, kind: type, performer: int) -> tuple[Any, int] | None:
        _members, chain = self.groups[int(self._group_of[performer])]
        return chain.find(kind, int(self._local[performer]))

    def describe(self) -> str:
        parts = []
        for members, chain in self.groups:
            names = ", ".join(type(s).__name__ for s in chain.stages) or "none"
            parts.append(f"performers {_ranges(members)}: {names}")
        return f"post: {'; '.join(parts)}; delay up to {self.delay_frames} frame(s)"


def _ranges(members: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, i = [], 0
    while i < len(members):
        j = i
        while j + 1 < len(members) and members[j + 1] == members[j] + 1:
            j += 1
        out.append(str(members[i]) if i == j else f"{members[i]}-{members[j]}")
        i = j + 1
    return ", ".join(out)


def _curve_is_identity(cfg: PostConfig) -> bool:
    c = cfg.curve
    return (all(v == 1.0 for v in c.gain.values()) and all(v == 0.0 for v in c.offset.values())
            and all(v == 1.0 for v in c.gamma.values()))  # fmt: skip


def structure_key(cfg: PostConfig) -> tuple[str, ...]:
    """The stages ``cfg`` switches on, with the modes that change what a stage does: performers
    with equal keys can share one chain (everything else is a per-performer setting)."""
    key: list[str] = []
    if cfg.calibration:
        key.append("calibration")
    if cfg.smoothing.kind != "off":
        key.append(f"smoothing:{cfg.smoothing.kind}")
    if cfg.gate.enabled:
        key.append("gate")
    if cfg.blink.enabled:
        key.append("blink")
    if cfg.symmetrize != "off":
        key.append(f"symmetrize:{cfg.symmetrize}")
    if not _curve_is_identity(cfg):
        key.append("curve")
    if cfg.head.enabled:
        key.append("head")
    if cfg.clamp:
        key.append("clamp")
    return tuple(key)


def group_by_structure(cfgs: Sequence[PostConfig]) -> list[list[int]]:
    """Performer indices grouped by :func:`structure_key`, groups in order of first member."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(structure_key(cfg), []).append(i)
    return list(groups.values())


def build_post_chain(
    cfgs: Sequence[PostConfig] | PostConfig, raw: bool = False, *, indices: Sequence[int] | None = None
) -> PostChain:
    """One chain for the performers of ``cfgs`` (one PostConfig per performer; a single
    PostConfig means one performer), with the stages they switch on (none with ``raw``).

    ``indices``: the performers' numbers (default 0..N-1), from which each one's blink and
    head-motion seeds derive; a chain built for performer 3 alone (``indices=[3]``) behaves
    exactly as row 3 of a chain built for all.  Bad settings raise BridgeError."""
    cfg_list = list(cfgs) if isinstance(cfgs, Sequence) else [cfgs]
    n = len(cfg_list)
    if n == 0:
        raise ValueError("build_post_chain needs at least one performer's PostConfig")
    ids = list(range(n)) if indices is None else [int(i) for i in indices]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} indices for {n} performers")
    if raw:
        return PostChain([], n)
    groups = group_by_structure(cfg_list)
    if len(groups) == 1:
        return _build_uniform(cfg_list, ids)
    return GroupedPostChain(
        [(members, _build_uniform([cfg_list[i] for i in members], [ids[i] for i in members]))
         for members in groups],
        n,
    )  # fmt: skip


def _build_uniform(cfgs: list[PostConfig], ids: list[int]) -> PostChain:
    """The chain of performers that share one :func:`structure_key`."""
    from bridge.post.blink import Blinks
    from bridge.post.calibration import Calibration, load_calibration
    from bridge.post.gate import SilenceGate
    from bridge.post.head import HeadMotion
    from bridge.post.shape import Curve, Symmetrize
    from bridge.post.smoothing import Ema, OneEuro

    head = cfgs[0]
    stages: list[Stage] = []
    if head.calibration:
        files: dict[str, np.ndarray] = {}  # a file shared by many performers is read once
        for c in cfgs:
            assert c.calibration
            if c.calibration not in files:
                files[c.calibration] = load_calibration(c.calibration).offsets
        stages.append(stack([Calibration(files[c.calibration], rescale=c.calibration_rescale)  # type: ignore[index]
                             for c in cfgs]))  # fmt: skip
    if head.smoothing.kind == "one_euro":
        stages.append(stack([OneEuro(c.smoothing.min_cutoff, c.smoothing.beta, c.smoothing.d_cutoff)
                             for c in cfgs]))  # fmt: skip
    elif head.smoothing.kind == "ema":
        stages.append(stack([Ema(c.smoothing.alpha) for c in cfgs]))
    if head.gate.enabled:
        stages.append(stack([
            SilenceGate(open_db=g.open_db, close_db=g.close_db, hold_frames=g.hold_frames,
                        attack_frames=g.attack_frames, release_frames=g.release_frames,
                        floor=g.floor, channels=g.channels, vad=g.vad,
                        vad_threshold=g.vad_threshold, vad_model=g.vad_model)
            for g in (c.gate for c in cfgs)
        ]))  # fmt: skip
    if head.blink.enabled:
        parts = []
        for c, i in zip(cfgs, ids, strict=True):
            b = c.blink
            if b.max_interval_s < b.min_interval_s:
                from bridge.errors import BridgeError

                raise BridgeError(
                    f"post.blink.max_interval_s ({b.max_interval_s}) must be >= "
                    f"post.blink.min_interval_s ({b.min_interval_s})"
                )
            parts.append(Blinks(min_interval_s=b.min_interval_s, max_interval_s=b.max_interval_s,
                                strength=b.strength, replace_model=b.replace_model,
                                seed=performer_seed(b.seed, i)))  # fmt: skip
        stages.append(stack(parts))
    if head.symmetrize != "off":
        sym = Symmetrize(head.symmetrize)  # stateless, no settings but the mode: one for all
        sym.performers = len(cfgs)
        stages.append(sym)
    if not _curve_is_identity(head):
        stages.append(stack([Curve(c.curve.gain, c.curve.offset, c.curve.gamma) for c in cfgs]))
    if head.head.enabled:
        stages.append(stack([HeadMotion(c.head, seed=performer_seed(c.head.seed, i))
                             for c, i in zip(cfgs, ids, strict=True)]))  # fmt: skip
    if head.clamp:
        stages.append(Clamp())
    return PostChain(stages, len(cfgs))


__all__ = [
    "Clamp",
    "FrameContext",
    "GroupedPostChain",
    "PostChain",
    "Stage",
    "build_post_chain",
    "group_by_structure",
    "structure_key",
]
