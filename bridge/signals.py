"""Deterministic test signals: speech-like audio without shipping recordings.

Used by the benchmark, the demo WAV and the model comparison: a voiced
source (a glottal-pulse-like harmonic series with vibrato) shaped by moving
formants, gated into syllables at ~4 Hz with pauses between phrases, plus a
little breath noise.  Not speech, but it has speech's spectrum and rhythm,
which is what exercises the model's compute and the silence handling.
"""

from __future__ import annotations

import numpy as np

from bridge.frame import SAMPLE_RATE


def speech_like(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Mono float32 in about [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = 130.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 8.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros(n)
    for h in range(1, 25):
        voiced += np.sin(h * phase) / h
    # Two moving formant-ish emphases, as amplitude weighting of harmonics' envelope.
    f1 = 500 + 300 * np.sin(2 * np.pi * 3.1 * t)
    f2 = 1500 + 600 * np.sin(2 * np.pi * 2.3 * t + 1.0)
    shape = 0.6 + 0.4 * np.sin(2 * np.pi * f1 / 4000.0) * np.cos(2 * np.pi * f2 / 8000.0)
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t) * 1.4, 0.0, 1.0) ** 0.7
    phrases = (np.floor(t / 2.5) % 3 != 2).astype(np.float64)  # 5 s talk, 2.5 s pause
    phrases = np.convolve(phrases, np.ones(int(0.03 * rate)) / int(0.03 * rate), mode="same")
    breath = rng.normal(0.0, 0.01, n)
    x = 0.18 * voiced * shape * syllables * phrases + breath * (0.3 + 0.7 * phrases)
    return x.astype(np.float32)


def staircase(frames: int, rate: int = SAMPLE_RATE, levels: int = 41, step: float = 0.01) -> np.ndarray:
    """Each 1/30 s frame k holds the constant ``step * ((7 k) % levels)``.

    Neighbouring frames differ by at least ``7 * step``, so a test that finds
    frame k's level in frame k's output has proved the alignment to the frame.
    """
    k = np.arange(frames)
    levels_k = (step * ((7 * k) % levels)).astype(np.float32)
    n = -((-frames * rate) // 30)
    idx = (np.arange(n) * 30) // rate
    return levels_k[idx]


def staircase_level(k: int, levels: int = 41, step: float = 0.01) -> float:
    return step * ((7 * k) % levels)


def _main(argv: list[str]) -> int:
    """``python -m bridge.signals OUT.wav [SECONDS]``: write the speech-like demo signal (48 kHz)."""
    import sys

    import soundfile

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bridge.signals OUT.wav [SECONDS]", file=sys.stderr)
        return 2
    seconds = float(argv[1]) if len(argv) > 1 else 15.0
    soundfile.write(argv[0], speech_like(seconds, 48_000), 48_000)
    print(f"wrote {argv[0]} ({seconds:g} s of speech-like audio at 48 kHz)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
