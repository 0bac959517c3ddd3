"""The CTC head: greedy text and speech probability from hand-made logits."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.model.ctc import CTC_VOCAB, SpeechProbability, greedy_decode, greedy_ids, speech_probability

IDX = {tok: i for i, tok in enumerate(CTC_VOCAB)}


def _logits(tokens: list[str], high: float = 8.0) -> np.ndarray:
    """One step per token, that token's logit ``high`` above the rest."""
    out = np.zeros((len(tokens), 32), np.float32)
    for t, tok in enumerate(tokens):
        out[t, IDX[tok]] = high
    return out


def test_vocabulary_is_wav2vec2_base_960h() -> None:
    assert len(CTC_VOCAB) == 32
    assert CTC_VOCAB[:5] == ("<pad>", "<s>", "</s>", "<unk>", "|")
    assert "".join(CTC_VOCAB[5:]) == "ETAONIHSRDLUMWCFGYPBVK'XJQZ"


def test_greedy_decode_collapses_repeats_and_drops_specials() -> None:
    steps = ["<pad>", "H", "H", "E", "L", "L", "<pad>", "L", "O", "O", "|", "|", "<s>", "W", "O", "R",
             "<unk>", "L", "D", "</s>", "|", "<pad>"]  # fmt: skip
    assert greedy_decode(_logits(steps)) == "HELLO WORLD"
    assert greedy_decode(_logits(steps)[None]) == "HELLO WORLD"  # the model's batch axis
    assert greedy_decode(_logits(["I", "T", "'", "S"])) == "IT'S"
    assert greedy_decode(_logits(["<pad>"] * 49)) == ""
    assert greedy_ids(_logits(["A", "A", "<pad>", "A"])) == [IDX["A"], IDX["A"]]
    assert greedy_decode(np.zeros((0, 32), np.float32)) == ""
    with pytest.raises(ValueError):
        greedy_decode(np.zeros((10, 31)))


def test_speech_probability_is_one_minus_blank() -> None:
    # Rows with a known blank probability p: logits = log of a distribution.
    p_blank = np.array([0.1, 0.5, 0.9])
    rest = (1 - p_blank)[:, None] / 31 * np.ones((3, 31))
    logits = np.log(np.concatenate([p_blank[:, None], rest], axis=1)) + 3.0  # softmax ignores shifts
    got = speech_probability(logits.astype(np.float32), 3)  # 3 steps -> 3 frames: the same points
    np.testing.assert_allclose(got, 1 - p_blank, atol=1e-6)
    assert got.dtype == np.float32


def test_speech_probability_resamples_50_to_30_fps_aligned() -> None:
    # Blank probability falling linearly over the window's 49 steps: linear interpolation keeps it
    # exact, and align_corners puts frame 0 on step 0 and frame 29 on step 48 (like the model's resample).
    steps, frames = 49, 30
    p = np.linspace(1.0, 0.0, steps) * 0.98 + 0.01
    logits = np.log(np.concatenate([p[:, None], ((1 - p) / 31)[:, None] * np.ones((steps, 31))], axis=1))
    got = speech_probability(logits, frames)
    expected = 1 - (np.linspace(1.0, 0.0, frames) * 0.98 + 0.01)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.shape == (frames,)


def test_speech_probability_step_edge_and_extreme_logits() -> None:
    # Silence for the first half, speech after: the edge lands mid-window in frames too.
    steps, frames = 49, 30
    logits = np.zeros((steps, 32), np.float32)
    logits[:24, 0] = 1000.0  # huge logits: no overflow
    logits[24:, IDX["A"]] = 1000.0
    got = speech_probability(logits, frames)
    assert np.all(np.isfinite(got))
    assert np.all(got[:14] == 0.0) and np.all(got[15:] == 1.0)
    assert 0.0 <= got[14] <= 1.0


def test_reusing_buffers() -> None:
    calc = SpeechProbability()
    logits = np.random.default_rng(0).standard_normal((49, 32)).astype(np.float32)
    a = calc(logits, 30)
    first = a.copy()
    b = calc(logits * 2, 30)
    assert a is b, "the hop loop's instance returns the same buffer every call"
    np.testing.assert_allclose(calc(logits, 30), first)
    out = np.empty(30, np.float32)
    assert speech_probability(logits, 30, out=out) is out
    np.testing.assert_allclose(out, first)
    assert calc(logits[:25], 15).shape == (15,)  # a new window size re-plans
    assert speech_probability(logits, 1).shape == (1,)
    with pytest.raises(ValueError):
        speech_probability(logits, 0)
