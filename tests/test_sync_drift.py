"""The passthrough's delay holds when the output device's clock drifts from the input's.

Two devices with different crystals cannot exist on this machine (the virtual microphone
and speaker share one JACK clock), so this test drives the real :class:`Passthrough`
(its ring, its output callback, its delay policy) from simulated clocks: capture blocks
arrive on the input's clock, output callbacks come on an output clock 200 ppm fast, the
hop loop pulls every 100 ms.  The simulated clocks are the one stand-in; the ground truth
is what the callback actually wrote: each burst's play time on the output clock minus its
capture time must stay at ``delay_ms`` all run long (uncorrected, 200 ppm would move it
60 ms in 5 minutes), the corrections must fall in silence, and the drift is reported.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bridge.audio.ring import SampleRing
from bridge.sync.delay import DelayPolicy
from bridge.sync.devices import OutputDevice
from bridge.sync.passthrough import Passthrough

RATE, BLOCK = 16000, 256


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


Run = tuple[Passthrough, np.ndarray, np.ndarray, list[int], float, int]


def simulate(ppm: float, delay_ms: float, seconds: float, pull_s: float = 0.1,
             xrun_at: float | None = None) -> Run:  # fmt: skip
    """Bursts captured on the input clock, played on an output clock ``ppm`` fast, pulled every
    ``pull_s`` (from ``xrun_at`` s on, the output plays everything a period later): (passthrough,
    voice, what was played, burst starts, output rate, samples captured)."""
    rng = np.random.default_rng(3)
    n = int(seconds * RATE)
    voice = np.zeros(n, np.float32)
    burst = int(0.3 * RATE)
    starts = list(range(RATE // 2, n - RATE, int(0.7 * RATE)))
    for s in starts:
        voice[s : s + burst] = rng.normal(0, 0.2, burst)

    clock = Clock()
    device = OutputDevice(0, "simulated", "none", 1, float(RATE))
    pt = Passthrough(device, RATE, 1, 0, BLOCK, DelayPolicy(RATE, delay_ms), lambda: (None, 0))
    pt.clock = clock
    pt.set_silence(-50.0)
    capture = SampleRing(RATE * 4, 1)
    pt.attach(capture)
    pt._reset_clock()
    pt._started = True
    callback, _ = pt._make_callback(pt._generation)

    out_rate = RATE * (1 + ppm * 1e-6)
    played = np.zeros(n + RATE, np.float32)
    scratch = np.zeros((RATE, 1), np.float32)
    outbuf = np.zeros((BLOCK, 1), np.float32)
    k_in = j_out = 0
    next_pull = pull_s
    while True:
        t_in = (k_in + 1) * BLOCK / RATE  # input block k arrives when its last sample is in
        t_out = j_out * BLOCK / out_rate  # output callback j, for stream samples from j * BLOCK
        if xrun_at is not None and t_out > xrun_at:
            t_out += BLOCK / out_rate  # the device played a period of its own: ours come a period later
        t = min(t_in, t_out, next_pull)
        if t > seconds:
            break
        clock.t = t
        if t == t_in:
            capture.write(voice[k_in * BLOCK : (k_in + 1) * BLOCK], t)
            k_in += 1
        elif t == t_out:
            callback(outbuf, BLOCK, None, None)
            played[j_out * BLOCK : (j_out + 1) * BLOCK] = outbuf[:, 0]
            j_out += 1
        else:
            got = capture.read(scratch)
            pt.feed(scratch[:got], capture.read_pos)
            next_pull += pull_s
    return pt, voice, played, starts, out_rate, k_in * BLOCK


@pytest.mark.parametrize("ppm", [200.0, -150.0])
def test_delay_holds_over_five_minutes_of_drift(ppm: float) -> None:
    delay_ms, burst = 150.0, int(0.3 * RATE)
    pt, voice, played, starts, out_rate, captured = simulate(ppm, delay_ms, 300.0)
    counters = pt.counters()
    assert counters["underruns"] == 0
    assert counters["drift_ppm"] == pytest.approx(ppm, abs=5.0)
    assert counters["corrections"] > 10  # single small steps, in silence, all run long
    # Ground truth: where each burst was played, on the output clock
    true_delays = []
    for s in starts:
        if s + burst > captured:
            break
        guess = int((s + 1) / RATE * out_rate + delay_ms / 1000 * out_rate)
        lo = max(0, guess - RATE // 10)
        window = played[lo : guess + RATE // 10 + burst]
        c = np.correlate(window, voice[s : s + burst], mode="valid")
        at = lo + int(np.argmax(c))
        seg, heard = played[at : at + burst], voice[s : s + burst]
        corr = float(c.max()) / float(np.sqrt(np.dot(seg, seg) * np.dot(heard, heard)))
        assert corr > 0.9999, (s, corr)  # never cut or stretched inside a burst
        true_delays.append((at / out_rate - (s + 1) / RATE) * 1000.0)
    assert len(true_delays) > 400
    assert max(abs(d - delay_ms) for d in true_delays) <= 1.0, (min(true_delays), max(true_delays))


def test_underruns_are_counted_and_said_once_when_they_start_and_once_when_they_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A delay shorter than the hop loop's pulls (20 ms against a pull every 100 ms): the
    output runs dry between pulls; silence is played, counted, and said twice in all."""
    caplog.set_level(logging.WARNING)
    pt, *_ = simulate(0.0, 20.0, 5.0)
    pt.stop()
    counters = pt.counters()
    assert counters["underruns"] > 20
    said = [r.getMessage() for r in caplog.records if "underrun" in r.getMessage()]
    assert len(said) == 2 and "output underrun" in said[0] and "underruns ended" in said[1], said
    # the progress line's part
    line = f"voice on 'simulated': delay {pt.delay_ms:.1f} ms (fixed), underruns {counters['underruns']}"
    assert pt.describe() == line and not pt.lost


def test_a_period_lost_by_the_output_driver_is_a_step_not_drift() -> None:
    """An xrun in the output driver (it plays a period of its own silence, so every later
    sample of ours plays 16 ms later): corrected in the next silence, counted as a clock
    step, and left out of the drift."""
    delay_ms, burst = 150.0, int(0.3 * RATE)
    pt, voice, played, starts, out_rate, captured = simulate(100.0, delay_ms, 60.0, xrun_at=30.0)
    counters = pt.counters()
    assert counters["clock_steps"] == 1 and counters["drift_ppm"] == pytest.approx(100.0, abs=5.0)
    late = BLOCK / out_rate  # every output sample after the xrun plays this much later
    for s in starts:
        if s + burst > captured or 29.0 < s / RATE < 32.0:  # the bursts around the xrun itself
            continue
        guess = int((s + 1) / RATE * out_rate + delay_ms / 1000 * out_rate)
        lo = max(0, guess - RATE // 10)
        c = np.correlate(played[lo : guess + RATE // 10 + burst], voice[s : s + burst], mode="valid")
        at = lo + int(np.argmax(c))
        shift = late if s / RATE > 30.0 else 0.0
        true_delay = (at / out_rate + shift - (s + 1) / RATE) * 1000.0
        assert true_delay == pytest.approx(delay_ms, abs=1.0), s / RATE
