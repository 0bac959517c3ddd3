"""A capture group's histories as rows of one array: the one-copy feed gives each performer
exactly the audio (and the NaN/Inf count) the per-performer feed gives, through slides,
gaps and the end of a stream."""

from __future__ import annotations

import numpy as np

from bridge.audio.history import AudioHistory, SharedHistories
from bridge.audio.ring import SampleRing
from bridge.streams.capture import CaptureGroup
from bridge.streams.stream import InputStream


class MultiRingSource:
    """The AudioSource contract around a bare multi-channel ring the test writes into."""

    name = "ring"
    finished = False
    error = None

    def __init__(self, samplerate: int, channels: int, seconds: float) -> None:
        self.samplerate = samplerate
        self.channels = channels
        self.ring = SampleRing(int(samplerate * seconds), channels)

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _group(rate: int, channels: list[int], share: bool) -> tuple[MultiRingSource, CaptureGroup]:
    source = MultiRingSource(rate, 4, seconds=1.0)
    streams = [InputStream(source, channel=c, window_samples=8000, window_frames=15, lookahead=1,
                           keep_seconds=0.5, limit_samples=40_000) for c in channels]  # fmt: skip
    group = CaptureGroup(source, streams)
    if not share:
        group.shared = None  # the per-performer feed, as a reference
    return source, group


def _write(source: MultiRingSource, audio: np.ndarray, when: float, block: int = 160) -> None:
    for b in range(0, audio.shape[0], block):
        source.ring.write(audio[b : b + block], when + b)


def test_shared_rows_equal_separate_histories_through_slides() -> None:
    rng = np.random.default_rng(1)
    alone = [AudioHistory(800, 1200) for _ in range(3)]
    rows = [AudioHistory(800, 1200) for _ in range(3)]
    shared = SharedHistories(rows)
    for n in [100, 533, 534, 2000, 1, 0, 700, 3000, 90] * 3:  # slides, and appends beyond keep
        x = rng.standard_normal((n, 3)).astype(np.float32)
        for i, h in enumerate(alone):
            h.append(x[:, i])
        shared.append_columns(x)
        assert shared.in_step()
        end = rows[0].count
        assert [h.count for h in rows] == [h.count for h in alone]
        wins = shared.windows(slice(0, 3), end)
        for i in range(3):
            np.testing.assert_array_equal(wins[i], alone[i].window_ending(end))
            np.testing.assert_array_equal(rows[i].window_ending(end), alone[i].window_ending(end))
        start = max(rows[0].oldest, end - 300)
        np.testing.assert_array_equal(shared.spans(slice(1, 3), start, end)[1], alone[2].span(start, end))


def test_one_copy_feed_equals_per_performer_feed_with_nan_gaps_and_the_end() -> None:
    rng = np.random.default_rng(2)
    audio = rng.uniform(-0.5, 0.5, (48_000, 4)).astype(np.float32)
    audio[1000:1010, 2] = np.nan  # channel 2 only: only its performer counts them
    audio[5000, 0] = np.inf
    results = []
    for share in (True, False):
        source, group = _group(16_000, [2, 0, 3], share)
        assert (group.shared is not None) == share
        _write(source, audio[:12_000], 100.0)
        group.pull()
        _write(source, audio[12_000:14_000], 300.0)
        # 1 s of ring: writing 1.3 s more before a pull overwrites 0.3 s (one gap for all)
        _write(source, audio[14_000:34_800], 500.0)
        group.pull()
        _write(source, audio[34_800:], 900.0)
        group.pull()
        streams = group.members
        results.append([(s.history.count, s.gaps, s.lost_samples, s.conditioner.nonfinite_samples, s.ended,
                         s.history.span(s.history.count - 4000, s.history.count).copy(),
                         s.capture_time(s.history.count - 1)) for s in streams])  # fmt: skip
    shared, alone = results
    for a, b in zip(shared, alone, strict=True):
        assert a[:5] == b[:5]
        np.testing.assert_array_equal(a[5], b[5])
        assert a[6] == b[6]
    # the NaN/Inf were counted for their own performer only, and the limit ended every stream
    assert [r[3] for r in shared] == [10, 1, 0]
    assert all(r[4] for r in shared) and shared[0][1] == 1


def test_no_sharing_when_a_member_mixes_or_resamples() -> None:
    source = MultiRingSource(48_000, 2, seconds=1.0)
    members = [InputStream(source, channel=c, window_samples=8000, window_frames=15, lookahead=0)
               for c in (0, 1)]  # fmt: skip
    assert CaptureGroup(source, members).shared is None
    source16 = MultiRingSource(16_000, 2, seconds=1.0)
    mixed = [InputStream(source16, channel=c, window_samples=8000, window_frames=15, lookahead=0)
             for c in (0, "mix")]  # fmt: skip
    assert CaptureGroup(source16, mixed).shared is None


def test_a_slide_keeps_only_what_the_next_frame_can_still_ask_for() -> None:
    """A slide moves the audio from the oldest sample still needed (``needed_from``), not the
    whole ``keep``: windows ending anywhere from there on stay exact, older ones are gone."""
    rng = np.random.default_rng(8)
    stream = rng.standard_normal(20_000).astype(np.float32)
    alone = AudioHistory(800, 3000)
    rows = [AudioHistory(800, 3000) for _ in range(2)]
    shared = SharedHistories(rows)
    needed = {"from": 0}
    for h in [alone, *rows]:
        h.needed_from = lambda: needed["from"]
    slides: dict[str, list[int]] = {"alone": [], "shared": []}

    def recorded(h: AudioHistory, key: str) -> None:
        retained = h.retained

        def kept() -> int:
            n = retained()
            slides[key].append(n)
            return n

        h.retained = kept  # type: ignore[method-assign]

    recorded(alone, "alone")
    recorded(rows[0], "shared")
    pos = 0
    for n in [500] * 40:
        needed["from"] = pos - 1000  # the next frame's window starts 1000 samples back
        x = stream[pos : pos + n]
        alone.append(x)
        shared.append_columns(np.stack([x, -x], axis=1))
        pos += n
        for end in (pos, pos - 150) if pos >= 950 else ():
            np.testing.assert_array_equal(alone.window_ending(end), stream[end - 800 : end])
            np.testing.assert_array_equal(shared.windows(slice(0, 2), end)[1], -stream[end - 800 : end])
    # slides happened (20000 samples through a 6800-sample buffer), each keeping from
    # needed_from, 1000 + up to 500 samples, never the whole keep of 3000
    assert slides["alone"] and len(slides["alone"]) == len(slides["shared"])
    assert all(1000 <= kept <= 1500 for kept in slides["alone"] + slides["shared"])
