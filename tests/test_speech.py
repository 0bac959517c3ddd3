"""The CTC head per published frame: speech probability and a streaming transcript."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from bridge.config import parse_config
from bridge.engine import Bridge
from bridge.model.ctc import CTC_VOCAB
from bridge.signals import speech_like
from bridge.streams.speech import STEP_HOP, STEP_SPAN, SpeechTrack


def logits_for(tokens: list[str]) -> np.ndarray:
    """One CTC step per token, that token certain."""
    a = np.full((len(tokens), len(CTC_VOCAB)), -10.0, dtype=np.float32)
    for t, tok in enumerate(tokens):
        a[t, CTC_VOCAB.index(tok)] = 10.0
    return a


def test_streaming_text_collapses_repeats_across_hops_and_never_repeats_itself() -> None:
    path = ["H", "H", "<pad>", "I", "|", "|", "T", "<pad>", "T", "O"]
    logits = logits_for(path)
    window = STEP_HOP * (len(path) - 1) + STEP_SPAN
    track = SpeechTrack()
    # Publish the window's audio in three hops; each hop decodes only the steps it completed.
    text = "".join(track.new_text(logits, window, window, upto) for upto in (1100, 2300, window))
    assert text == "HI TTO"  # the blank between the T's keeps both, as CTC says
    assert track.new_text(logits, window, window, window) == ""  # nothing twice


def test_speech_probability_is_one_minus_blank() -> None:
    logits = logits_for(["<pad>"] * 25 + ["A"] * 24)
    prob = SpeechTrack().frames(logits, 30, 0, 30)
    assert prob.shape == (30,) and prob[0] < 0.01 and prob[-1] > 0.99


def test_frames_from_a_lam_model_carry_speech_probability(tmp_path: Path) -> None:
    wav = tmp_path / "s.wav"
    soundfile.write(str(wav), speech_like(1.0), 16000)
    frames = []
    cfg = parse_config({"input": {"kind": "file", "file": str(wav), "realtime": False},
                        "model": {"preset": "synthetic", "providers": ["cpu"]}, "output": []})  # fmt: skip
    bridge = Bridge(cfg, on_frame=lambda f: frames.append((f.speech_prob, f.text)))
    try:
        bridge.run()
    finally:
        bridge.close()
    probs = [p for p, _ in frames]
    assert len(probs) == 30 and all(p is not None and 0.0 <= p <= 1.0 for p in probs)
    assert all(isinstance(t, str) for _, t in frames)


def test_batched_speech_probability_and_text_match_one_window_at_a_time() -> None:
    """The engine's batch path (one numpy pass for all rows, text from a batch argmax) gives
    each row exactly what the per-window path gives it."""
    from bridge.model.ctc import BatchSpeechProbability, SpeechProbability

    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((5, 49, len(CTC_VOCAB))) * 4).astype(np.float32)
    batch = BatchSpeechProbability()
    for frames, lo, count in ((30, 27, 3), (30, 0, 30), (30, 29, 1), (15, 10, 5)):
        out = np.empty((5, count), np.float32)
        batch(logits, frames, lo, count, out)
        for b in range(5):
            one = SpeechProbability()(logits[b], frames)[lo : lo + count]
            np.testing.assert_allclose(out[b], one, rtol=0, atol=1e-6)
    window = STEP_HOP * 48 + STEP_SPAN
    one, two, three = SpeechTrack(), SpeechTrack(), SpeechTrack()
    best = logits.argmax(axis=2)
    for b, upto in enumerate((0, 390, 401, 5000, window)):
        for end in (window, window + 640):
            text = one.new_text(logits[b], end, window, upto + end - window)
            assert text == two.new_text_from(best[b], end, window, upto + end - window)
            # the path from the first undecoded step on (what the engine takes for a batch)
            offset = min(three.first_new_step(end, window), logits.shape[1] - 1)
            tail = logits[b, offset:].argmax(axis=1)
            assert text == three.new_text_from(tail, end, window, upto + end - window, offset)


def test_speech_tracks_of_many_rows_decode_as_one_track_per_row() -> None:
    """The engine's array form of the transcripts (rows in step walk their new steps at once,
    rows apart one by one) gives each row exactly what its own SpeechTrack gives."""
    from bridge.streams.speech import SpeechTracks

    rng = np.random.default_rng(7)
    rows = np.array([0, 2, 3, 5])
    tracks, alone = SpeechTracks(6), [SpeechTrack() for _ in range(6)]
    window = STEP_HOP * 48 + STEP_SPAN
    end, chars = window, 0
    for hop in range(40):
        # mostly blank (as speech is), some characters; repeats across the hop boundary
        logits = (rng.standard_normal((4, 49, len(CTC_VOCAB))) * 2).astype(np.float32)
        logits[:, :, 0] += rng.choice([8.0, 0.0], size=(4, 49), p=[0.7, 0.3])
        if hop == 20:  # one row falls behind (published less): its decode position differs
            tracks.decoded_to[3] -= 2 * STEP_HOP
            alone[3]._decoded_to -= 2 * STEP_HOP
        upto = end - 200
        offset = min(tracks.first_new_step(rows, end, window), 48)
        best = logits[:, offset:].argmax(axis=2)
        got = tracks.new_texts(best, offset, rows, end, window, upto)
        want = [alone[r].new_text(logits[i], end, window, upto) for i, r in enumerate(rows.tolist())]
        assert got == want, hop
        chars += sum(len(t) for t in got)
        end += 533 if hop % 3 else 534
    assert chars > 50  # the rows really spoke
    assert [int(tracks.last_id[r]) for r in rows] == [alone[r]._last_id for r in rows]
