"""What the CTC head says about each published frame: speech probability and new text.

Per hop the model sees a whole window, but only the frames being published are
new.  ``SpeechTrack`` takes the window's CTC logits and returns, for those
frames, ``1 - P(blank)`` (the voice gate's input) and the characters whose CTC
steps end inside the newly published audio, decoded greedily with the repeat
collapse carried across hops, so the running text reads like one decode.
"""

from __future__ import annotations

import numpy as np

from bridge.model.ctc import BLANK_ID, CTC_VOCAB, SPECIAL_IDS, SpeechProbability, _check_logits

#: wav2vec2's feature extractor: one CTC step every 320 samples, each seeing 400.
STEP_HOP = 320
STEP_SPAN = 400


class SpeechTrack:
    """Speech probability per published frame and a streaming greedy transcript."""

    def __init__(self) -> None:
        self._prob = SpeechProbability()
        self._decoded_to = 0  #: stream sample up to which steps have been decoded
        self._last_id = BLANK_ID  #: last path token, for collapsing repeats across hops

    def frames(self, logits: np.ndarray, window_frames: int, lo: int, count: int) -> np.ndarray:
        """Speech probability of window frames ``lo .. lo + count - 1`` (a reused view)."""
        return self._prob(logits, window_frames)[lo : lo + count]

    def new_text(self, logits: np.ndarray, window_end: int, window: int, upto: int) -> str:
        """Characters of the steps that end in (decoded_to, upto]; ``|`` becomes a space."""
        return self.new_text_from(_check_logits(logits).argmax(axis=1), window_end, window, upto)

    def first_new_step(self, window_end: int, window: int) -> int:
        """The first step of the window ending at ``window_end`` not decoded yet: the engine
        takes the argmax path of a batch from the earliest of its rows' on."""
        start = window_end - window + STEP_SPAN  # end of step 0
        return max(0, (self._decoded_to - start) // STEP_HOP + 1)

    def new_text_from(self, best: np.ndarray, window_end: int, window: int, upto: int,
                      offset: int = 0) -> str:  # fmt: skip
        """:meth:`new_text` from the window's argmax path ``best`` (``[T - offset]`` ids: the
        path from step ``offset`` on), which the engine takes for a whole batch in one call:
        only the new steps are walked."""
        start = window_end - window + STEP_SPAN  # end of step 0
        # steps k with decoded_to < start + k * STEP_HOP <= upto
        k_lo = max(0, (self._decoded_to - start) // STEP_HOP + 1)
        k_hi = min(best.shape[0] + offset - 1, (upto - start) // STEP_HOP)
        if k_lo > k_hi:
            return ""
        if k_lo < offset:
            raise ValueError(f"the path starts at step {offset}, after the first new step {k_lo}")
        text, self._last_id = _collapse(best[k_lo - offset : k_hi - offset + 1].tolist(), self._last_id)
        self._decoded_to = start + k_hi * STEP_HOP
        return text


class SpeechTracks:
    """The streaming greedy transcripts of ``n`` performers, as arrays (row = performer index).

    The same decode as :class:`SpeechTrack` (``new_text_from``) for many rows at once: rows
    in step (one window end, one decode position: performers of one capture group) walk
    their new steps with a few array operations, and only rows that emit a character
    build a string.
    """

    def __init__(self, n: int) -> None:
        self.decoded_to = np.zeros(n, np.int64)  #: per row: stream sample up to which steps are decoded
        self.last_id = np.full(n, BLANK_ID, np.int64)  #: per row: last path token (repeat collapse)

    def first_new_step(self, rows: np.ndarray, window_end: int, window: int) -> int:
        """The earliest step of ``rows``' windows (ending at ``window_end``) not decoded yet."""
        start = window_end - window + STEP_SPAN  # end of step 0
        return max(0, (int(self.decoded_to[rows].min()) - start) // STEP_HOP + 1)

    def new_texts(self, best: np.ndarray, offset: int, rows: np.ndarray, window_end: int, window: int,
                  upto: int) -> list[str]:  # fmt: skip
        """Each row's characters of the steps ending in (its decoded_to, upto]; ``best`` is
        the rows' argmax paths ``[R, T - offset]`` from step ``offset`` on."""
        count = len(rows)
        start = window_end - window + STEP_SPAN
        k_lo = np.maximum(0, (self.decoded_to[rows] - start) // STEP_HOP + 1)
        k_hi = min(best.shape[1] + offset - 1, (upto - start) // STEP_HOP)
        lo = int(k_lo.min())
        if lo > k_hi:
            return [""] * count
        if lo < offset:
            raise ValueError(f"the paths start at step {offset}, after the first new step {lo}")
        if int(k_lo.max()) != lo:  # rows at different decode positions: one at a time
            return [self._row_text(best[i], offset, int(r), int(k_lo[i]), k_hi, start)
                    for i, r in enumerate(rows.tolist())]  # fmt: skip
        ids = best[:, lo - offset : k_hi - offset + 1]
        prev = np.empty_like(ids)
        prev[:, 0] = self.last_id[rows]
        prev[:, 1:] = ids[:, :-1]
        emit = (ids != prev) & (ids >= SPECIAL_IDS)
        texts = [""] * count
        for i in np.flatnonzero(emit.any(axis=1)).tolist():
            texts[i] = "".join(" " if CTC_VOCAB[t] == "|" else CTC_VOCAB[t] for t in ids[i][emit[i]].tolist())
        self.last_id[rows] = ids[:, -1]
        self.decoded_to[rows] = start + k_hi * STEP_HOP
        return texts

    def _row_text(self, best: np.ndarray, offset: int, row: int, k_lo: int, k_hi: int, start: int) -> str:
        if k_lo > k_hi:
            return ""
        text, self.last_id[row] = _collapse(best[k_lo - offset : k_hi - offset + 1].tolist(),
                                            int(self.last_id[row]))  # fmt: skip
        self.decoded_to[row] = start + k_hi * STEP_HOP
        return text


def _collapse(ids: list[int], last: int) -> tuple[str, int]:
    """Greedy CTC text of path ``ids`` after token ``last``: repeats collapsed, blanks and
    specials dropped, ``|`` a space; and the path's last token."""
    out = []
    for i in ids:
        if i != last and i >= SPECIAL_IDS:
            out.append(" " if CTC_VOCAB[i] == "|" else CTC_VOCAB[i])
        last = i
    return "".join(out), last
