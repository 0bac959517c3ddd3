"""The LAM export's CTC head: greedy text and a per-frame speech probability.

LAM's ONNX export carries a small 768 -> 32 CTC head (``asr_logits``, 50 fps,
the wav2vec2-base-960h character vocabulary).  It is not good ASR, but it is a
free signal: the argmax path gives rough text, and ``1 - P(blank)`` per step is
a speech probability the post-processing can use as a voice gate.  Both run per
hop, so :class:`SpeechProbability` keeps its buffers between calls.
"""

from __future__ import annotations

import threading

import numpy as np

#: wav2vec2-base-960h vocabulary, index 0..31 (``<pad>`` is the CTC blank).
CTC_VOCAB: tuple[str, ...] = (
    "<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L",
    "U", "M", "W", "C", "F", "G", "Y", "P", "B", "V", "K", "'", "X", "J", "Q", "Z",
)  # fmt: skip
BLANK_ID = 0
#: Ids 0..3 are special tokens, never text.
SPECIAL_IDS = 4
WORD_DELIMITER = "|"


def _check_logits(logits: np.ndarray) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim == 3 and a.shape[0] == 1:  # tolerate the model's batch axis
        a = a[0]
    if a.ndim != 2 or a.shape[1] != len(CTC_VOCAB):
        raise ValueError(f"CTC logits must have shape (T, {len(CTC_VOCAB)}), got {np.shape(logits)}")
    return a


def greedy_ids(logits: np.ndarray) -> list[int]:
    """The greedy CTC path: argmax per step, repeats collapsed, specials (0..3) dropped."""
    best = _check_logits(logits).argmax(axis=1)
    if best.size == 0:
        return []
    keep = np.ones(best.size, dtype=bool)
    keep[1:] = best[1:] != best[:-1]
    return [int(i) for i in best[keep] if i >= SPECIAL_IDS]


def greedy_decode(logits: np.ndarray) -> str:
    """Text of the greedy path; ``|`` is a space (leading/trailing/double spaces removed)."""
    text = "".join(CTC_VOCAB[i] for i in greedy_ids(logits))
    return " ".join(text.replace(WORD_DELIMITER, " ").split())


def _plan(steps: int, frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear-interpolation taps from ``steps`` (50 fps) to ``frames`` (30 fps), align_corners.

    The same mapping the model uses to resample its 50 fps features to 30 fps
    (upstream LAM, ``align_corners=True``): frame ``j`` sits at step
    ``j * (steps - 1) / (frames - 1)``, so the first and last frames of a window
    coincide with its first and last CTC steps.
    """
    scale = 0.0 if frames == 1 or steps == 1 else (steps - 1) / (frames - 1)
    pos = np.arange(frames) * scale
    lo = np.minimum(np.floor(pos).astype(np.intp), steps - 1)
    hi = np.minimum(lo + 1, steps - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


class SpeechProbability:
    """``1 - softmax(logits)[:, blank]`` resampled to the window's 30 fps frames.

    Keeps the interpolation plan and scratch buffers for the last shape seen, so
    the per-hop call allocates nothing once the window size is steady.  The
    returned array is reused by the next call: copy what must outlive it.
    """

    def __init__(self) -> None:
        self._shape: tuple[int, int] = (-1, -1)

    def _prepare(self, steps: int, frames: int) -> None:
        self._lo, self._hi, self._w = _plan(steps, frames)
        self._one_minus_w = (1.0 - self._w).astype(np.float32)
        self._scratch = np.empty((steps, len(CTC_VOCAB)), np.float32)
        self._row = np.empty(steps, np.float32)
        self._speech = np.empty(steps, np.float32)
        self._a = np.empty(frames, np.float32)
        self._out = np.empty(frames, np.float32)
        self._shape = (steps, frames)

    def __call__(self, logits: np.ndarray, frames: int) -> np.ndarray:
        a = _check_logits(logits)
        steps = a.shape[0]
        if frames < 1 or steps < 1:
            raise ValueError(f"need at least one step and one frame (got {steps} steps, {frames} frames)")
        if self._shape != (steps, frames):
            self._prepare(steps, frames)
        s, row = self._scratch, self._row
        np.max(a, axis=1, out=row)
        np.subtract(a, row[:, None], out=s)
        np.exp(s, out=s)
        np.sum(s, axis=1, out=row)
        np.divide(s[:, BLANK_ID], row, out=self._speech)  # P(blank)
        np.subtract(1.0, self._speech, out=self._speech)
        out = self._out
        np.take(self._speech, self._lo, out=self._a)
        np.multiply(self._a, self._one_minus_w, out=out)
        np.take(self._speech, self._hi, out=self._a)
        np.multiply(self._a, self._w, out=self._a)
        np.add(out, self._a, out=out)
        np.clip(out, 0.0, 1.0, out=out)
        return out


class BatchSpeechProbability:
    """:class:`SpeechProbability` for a batch: ``[B, T, V]`` logits of windows that share
    their step and frame counts, in one pass of numpy calls rather than one per window.

    Only the frames asked for (``lo .. lo + count - 1`` of each window) are interpolated.
    Element for element the same arithmetic as :class:`SpeechProbability`; scratch is
    kept per shape, so a steady batch allocates nothing.
    """

    def __init__(self) -> None:
        self._plans: dict[tuple[int, int, int, int], tuple[np.ndarray, ...]] = {}
        self._scratch: dict[tuple[int, int, int], tuple[np.ndarray, ...]] = {}

    def _plan(self, steps: int, frames: int, lo: int, count: int) -> tuple[np.ndarray, ...]:
        key = (steps, frames, lo, count)
        plan = self._plans.get(key)
        if plan is None:
            lo_i, hi_i, w = _plan(steps, frames)
            taps = slice(lo, lo + count)
            w = w[taps].copy()
            # only the steps these frames interpolate between are ever read: [first, last]
            first, last = int(lo_i[taps].min()), int(hi_i[taps].max())
            plan = (lo_i[taps] - first, hi_i[taps] - first, w, (1.0 - w).astype(np.float32),
                    np.array([first, last + 1]))  # fmt: skip
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def __call__(self, logits: np.ndarray, frames: int, lo: int, count: int, out: np.ndarray) -> np.ndarray:
        """Speech probability of frames ``lo .. lo + count - 1`` of each window into ``out``
        (``[B, count]`` float32), from ``logits`` ``[B, T, V]``."""
        rows, steps, vocab = logits.shape
        if vocab != len(CTC_VOCAB) or steps < 1 or frames < 1:
            raise ValueError(f"CTC logits must have shape (B, T, {len(CTC_VOCAB)}), got {logits.shape}")
        lo_i, hi_i, w, one_minus_w, span = self._plan(steps, frames, lo, count)
        # The softmax of only the steps read (a hop's frames need two or three of the window's
        # fifty): the same arithmetic per element, a small part of the work.
        logits = logits[:, span[0] : span[1]]
        steps = logits.shape[1]
        bufs = self._scratch.get((rows, steps, count))
        if bufs is None:
            if len(self._scratch) > 64:
                self._scratch.clear()
            bufs = self._scratch[(rows, steps, count)] = (
                np.empty((rows, steps, vocab), np.float32), np.empty((rows, steps), np.float32),
                np.empty((rows, steps), np.float32), np.empty((rows, count), np.float32),
            )  # fmt: skip
        s, row, speech, a = bufs
        np.max(logits, axis=2, out=row)
        np.subtract(logits, row[:, :, None], out=s)
        np.exp(s, out=s)
        np.sum(s, axis=2, out=row)
        np.divide(s[:, :, BLANK_ID], row, out=speech)  # P(blank)
        np.subtract(1.0, speech, out=speech)
        np.take(speech, lo_i, axis=1, out=a)
        np.multiply(a, one_minus_w, out=out)
        np.take(speech, hi_i, axis=1, out=a)
        np.multiply(a, w, out=a)
        np.add(out, a, out=out)
        np.clip(out, 0.0, 1.0, out=out)
        return out


_local = threading.local()


def speech_probability(logits: np.ndarray, frames: int, out: np.ndarray | None = None) -> np.ndarray:
    """Speech probability per 30 fps frame of one window: ``(frames,)`` float32 in [0, 1].

    ``logits`` are one window's ``(T50, 32)`` CTC logits and ``frames`` the number
    of blendshape frames the same window produced.  Scratch buffers are kept per
    thread; the result goes into ``out`` when given (no allocation at all), else
    into a fresh array.
    """
    calc = getattr(_local, "calc", None)
    if calc is None:
        calc = _local.calc = SpeechProbability()
    result = calc(logits, frames)
    if out is None:
        return result.copy()
    if out.shape != (frames,):
        raise ValueError(f"out has shape {out.shape}, expected ({frames},)")
    out[...] = result
    return out


__all__ = [
    "CTC_VOCAB", "BLANK_ID", "BatchSpeechProbability", "SpeechProbability", "greedy_decode", "greedy_ids",
    "speech_probability",
]  # fmt: skip
