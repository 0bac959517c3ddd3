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
        out = []
        last = self._last_id
        for i in best[k_lo - offset : k_hi - offset + 1].tolist():
            if i != last and i >= SPECIAL_IDS:
                out.append(" " if CTC_VOCAB[i] == "|" else CTC_VOCAB[i])
            last = i
        self._last_id = last
        self._decoded_to = start + k_hi * STEP_HOP
        return "".join(out)
