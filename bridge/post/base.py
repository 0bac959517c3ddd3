"""The contract every post-processing stage follows, for one performer or many at once.

Stages are causal and stateful: the hop loop hands them each published block
of frames exactly once, in frame order, and they transform the values in place.
What a stage may need besides the values (the audio's loudness, the model's
speech probability, the frame numbers and their time) comes in a
:class:`FrameContext`, computed once per block by the hop loop.

A stage serves N performers (a chain is built for all of them, see
:func:`bridge.post.build_post_chain`): its state and its settings are arrays with a
leading performer axis, and one call processes ``values`` of shape ``[P, F, 52]``,
P performers of this batch with F frames each.  ``ctx.rows`` says which of the N
performers the P rows are (None: all N, in order, the fast path that works on the
state arrays without copying them).  The single-stream form, ``values [F, 52]`` with an
unbatched context, is still accepted: it is the batch of one (:func:`as_batch`).

Stages are built for one performer (their constructors take one performer's settings,
as before) and combined with :func:`stack`: the per-performer arrays a stage lists in
``ROW_ARRAYS`` (and the per-performer objects in ``ROW_LISTS``) are concatenated, while
the attributes in ``STRUCTURE`` (what kind of work the stage does, e.g. the symmetrize
mode) must agree.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np


@dataclass(slots=True)
class FrameContext:
    """Per-frame facts about the block being processed.

    Batched (what the engine passes): P performers, F frames each.

    * ``first_frame``: int64 ``[P]``, each performer's frame number of its row's frame 0
    * ``rms``: float32 ``[P, F]``, RMS of each frame's own 1/30 s of 16 kHz audio
    * ``speech_prob``: float32 ``[P, F]`` (1 - CTC blank probability) or None
    * ``head``: float32 ``[P, F, 9]``: Live Link head/eye values a stage may fill, or None
    * ``audio``: float32 ``[P, S]`` or None: each performer's own 16 kHz audio of its block,
      **right-aligned**: row p ends with the last sample of its frame
      ``first_frame[p] + F - 1``, and its block is the last
      ``frame_end_sample(first + F - 1) - frame_end_sample(first - 1)`` samples of the row
      (blocks of F frames differ by a sample with where they start; S is the longest)
    * ``rows``: intp ``[P]``, which of the chain's N performers the rows are, or None for
      all N in order (then P == N)

    Unbatched (one stream, the old form): ``first_frame`` an int, ``rms`` ``(F,)``,
    ``speech_prob`` ``(F,)``, ``head`` ``(F, 9)``, ``audio`` exactly the block's samples.
    """

    first_frame: int | np.ndarray
    rms: np.ndarray
    speech_prob: np.ndarray | None = None
    head: np.ndarray | None = None
    audio: np.ndarray | None = None
    rows: np.ndarray | None = None

    @property
    def batched(self) -> bool:
        return self.rms.ndim == 2

    @property
    def count(self) -> int:
        """Frames per performer in this block."""
        return int(self.rms.shape[-1])

    def as_batch(self) -> FrameContext:
        """This context as a batch (an unbatched one becomes P = 1, as views)."""
        if self.rms.ndim == 2:
            return self
        return FrameContext(
            np.array([self.first_frame], dtype=np.int64), self.rms[None],
            None if self.speech_prob is None else self.speech_prob[None],
            None if self.head is None else self.head[None],
            None if self.audio is None else self.audio[None],
        )  # fmt: skip

    def select(self, sel: np.ndarray, rows: np.ndarray | None) -> FrameContext:
        """The batch rows ``sel`` (copies), as performers ``rows`` of another chain."""
        return FrameContext(
            self.first_frame[sel], self.rms[sel],  # type: ignore[index]
            None if self.speech_prob is None else self.speech_prob[sel],
            None if self.head is None else self.head[sel],
            None if self.audio is None else self.audio[sel],
            rows,
        )  # fmt: skip


def as_batch(values: np.ndarray, ctx: FrameContext | None) -> tuple[np.ndarray, FrameContext | None]:
    """``values [F, 52]`` and an unbatched context as a batch of one (views); batches unchanged."""
    if values.ndim == 3:
        return values, ctx
    return values[None], None if ctx is None else ctx.as_batch()


def performer_seed(seed: int | None, index: int) -> int | None:
    """The random seed of performer ``index`` for a configured ``seed``.

    Performer 0 keeps the seed itself (one performer behaves exactly as the single-stream
    bridge did); the others get a seed derived from (seed, index), so performers sharing a
    configuration do not blink or move in unison.  None (fresh entropy) stays None: every
    performer draws its own."""
    if seed is None or index == 0:
        return seed
    state = np.random.SeedSequence((int(seed), int(index))).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class Stage(Protocol):
    """One causal post-processing step."""

    #: frames of delay this stage adds (the largest of its performers'; documented per stage)
    delay_frames: int

    def process(self, values: np.ndarray, ctx: FrameContext) -> None:
        """Transform ``values`` (``[P, F, 52]`` or ``[F, 52]``, canonical order) in place."""
        ...


S = TypeVar("S")


def stack(parts: Sequence[S]) -> S:
    """One stage serving the performers of ``parts`` (each built for its own performers), in order.

    Concatenates the per-performer arrays (``ROW_ARRAYS``) and lists (``ROW_LISTS``) of the
    parts; attributes named in ``STRUCTURE`` must be equal (a chain does one kind of work for
    all its performers: see :func:`bridge.post.structure_key`); everything else is taken from
    the first part.  Calls the result's ``_stacked()`` (scratch buffers, summaries)."""
    first: Any = parts[0]
    if len(parts) == 1:
        return first
    for p in parts[1:]:
        if type(p) is not type(first):
            raise ValueError(f"cannot stack {type(p).__name__} with {type(first).__name__}")
        for name in getattr(first, "STRUCTURE", ()):
            if getattr(p, name) != getattr(first, name):
                raise ValueError(f"{type(first).__name__}.{name} differs between performers")
    out = copy.copy(first)
    for name in getattr(first, "ROW_ARRAYS", ()):
        setattr(out, name, np.concatenate([getattr(p, name) for p in parts], axis=0))
    for name in getattr(first, "ROW_LISTS", ()):
        setattr(out, name, [x for p in parts for x in getattr(p, name)])
    out.performers = sum(getattr(p, "performers", 1) for p in parts)
    if hasattr(out, "_scratch"):
        out._scratch = Scratch()
    if hasattr(out, "_stacked"):
        out._stacked()
    return out  # type: ignore[no-any-return]


class Scratch:
    """Scratch buffers by name and shape, made once and reused (no allocation once warm)."""

    __slots__ = ("_bufs",)

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A C-contiguous array of ``shape`` (contents undefined); one per (name, shape)."""
        buf = self._bufs.get((name, shape))
        if buf is None:
            if len(self._bufs) > 256:  # batch shapes come and go: keep the set bounded
                self._bufs.clear()
            buf = self._bufs[(name, shape)] = np.empty(shape, dtype=dtype)
        return buf
