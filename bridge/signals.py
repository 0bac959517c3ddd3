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

#: Formants F1, F2, F3 (Hz) of the vowels ``speech_like(vowels=True)`` cycles through
#: (adult male averages, Peterson & Barney 1952).
VOWELS: tuple[tuple[str, float, float, float], ...] = (
    ("a", 730.0, 1090.0, 2440.0), ("i", 270.0, 2290.0, 3010.0), ("o", 500.0, 900.0, 2400.0),
    ("e", 530.0, 1840.0, 2480.0), ("u", 300.0, 870.0, 2240.0), ("a", 730.0, 1090.0, 2440.0),
    ("e", 530.0, 1840.0, 2480.0),
)  # fmt: skip
#: Formant bandwidths (Hz), F1..F3.
BANDWIDTHS = (60.0, 90.0, 150.0)


def formant_gain(freq: np.ndarray, formants: tuple[np.ndarray | float, ...]) -> np.ndarray:
    """A vocal tract's gain at ``freq``: the sum of one resonance per formant (magnitude)."""
    pairs = zip(formants, BANDWIDTHS, strict=True)
    return sum(1.0 / np.sqrt(1.0 + ((freq - fc) / bw) ** 2) for fc, bw in pairs)


def vowel_like(formants: tuple[float, float, float], seconds: float = 1.0, rate: int = SAMPLE_RATE,
               f0: float = 120.0, tilt: float = 1.0, rms: float = 0.1) -> np.ndarray:  # fmt: skip
    """A sustained vowel: ``f0``'s harmonics (source falling ``6 * tilt`` dB/octave) through
    three formant resonances; float32 at ``rms``."""
    t = np.arange(int(round(seconds * rate))) / rate
    x = np.zeros_like(t)
    for h in range(1, int(min(7000.0, rate / 2 - f0) / f0)):
        x += formant_gain(np.float64(h * f0), formants) / h**tilt * np.sin(2 * np.pi * h * f0 * t)
    return (rms * x / np.sqrt(np.mean(x**2))).astype(np.float32)


def speech_like(seconds: float, rate: int = SAMPLE_RATE, seed: int = 0, vowels: bool = False) -> np.ndarray:
    """Mono float32 in about [-0.5, 0.5].

    ``vowels``: each syllable gets a vowel's three formants (:data:`VOWELS`, in turn) on
    the same 1/h harmonic source instead of one fixed spectrum, so a model that reads
    vowel colour shows it (the demo WAV); the rhythm, pauses and loudness are the same.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    f0 = 130.0 + 25.0 * np.sin(2 * np.pi * 0.7 * t) + 8.0 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros(n)
    if vowels:
        # The vowel changes where the syllable envelope is zero (every 1/4 s), so no click.
        which = np.floor(t * 4.0).astype(np.int64) % len(VOWELS)
        formants = tuple(np.array([v[i] for v in VOWELS])[which] for i in (1, 2, 3))
        power = np.zeros(n)
        for h in range(1, 25):
            g = formant_gain(h * f0, formants) / h
            voiced += g * np.sin(h * phase)
            power += g**2 / 2
        voiced *= np.sqrt(np.pi**2 / 12) / np.sqrt(power)  # the fixed spectrum's RMS (sum 1/2h^2)
    else:
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
    """``python -m bridge.signals OUT.wav [SECONDS]``: write the speech-like demo signal (48 kHz),
    with vowels (the demo model's lips follow them)."""
    import sys

    import soundfile

    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m bridge.signals OUT.wav [SECONDS]", file=sys.stderr)
        return 2
    seconds = float(argv[1]) if len(argv) > 1 else 15.0
    soundfile.write(argv[0], speech_like(seconds, 48_000, vowels=True), 48_000)
    print(f"wrote {argv[0]} ({seconds:g} s of speech-like audio at 48 kHz)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
