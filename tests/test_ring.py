"""The SPSC ring under a real concurrent writer and reader."""

from __future__ import annotations

import threading
import time

import numpy as np

from bridge.audio.ring import SampleRing


def test_concurrent_writer_and_reader_lose_nothing_and_keep_order() -> None:
    ring = SampleRing(capacity=4096, channels=2)
    total = 400_000
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 700, size=total // 100)

    def writer() -> None:
        sent = 0
        for n in sizes:
            n = int(min(n, total - sent))
            if n == 0:
                break
            while ring.capacity - ring.available() < n:  # a real device would not wait;
                time.sleep(0)  # here the test wants no overrun, to check every sample
            block = np.arange(sent, sent + n, dtype=np.float32)
            ring.write(np.stack([block, -block], axis=1), time.monotonic())
            sent += n
        while sent < total:
            n = min(500, total - sent)
            while ring.capacity - ring.available() < n:
                time.sleep(0)
            block = np.arange(sent, sent + n, dtype=np.float32)
            ring.write(np.stack([block, -block], axis=1), time.monotonic())
            sent += n

    got = np.zeros((total, 2), dtype=np.float32)
    out = np.zeros((333, 2), dtype=np.float32)
    t = threading.Thread(target=writer)
    t.start()
    pos = 0
    while pos < total:
        n = ring.read(out)
        got[pos : pos + n] = out[:n]
        pos += n
    t.join()
    expected = np.arange(total, dtype=np.float32)
    assert np.array_equal(got[:, 0], expected) and np.array_equal(got[:, 1], -expected)
    assert ring.overrun == 0 and ring.written == total


def test_overrun_skips_to_oldest_intact_and_counts() -> None:
    ring = SampleRing(capacity=100, channels=1)
    ring.write(np.arange(250, dtype=np.float32), 1.0)
    out = np.zeros((300, 1), dtype=np.float32)
    n = ring.read(out)
    assert n == 100 and ring.overrun == 150
    assert np.array_equal(out[:n, 0], np.arange(150, 250, dtype=np.float32))


def test_capture_time_follows_blocks_forward_and_back() -> None:
    ring = SampleRing(capacity=1000, channels=1)
    for b in range(5):
        ring.write(np.zeros(100, dtype=np.float32), float(b))
    assert ring.capture_time(0) == 0.0
    assert ring.capture_time(99) == 0.0
    assert ring.capture_time(100) == 1.0
    assert ring.capture_time(450) == 4.0
    assert ring.capture_time(150) == 1.0  # backwards works too
    assert ring.capture_time(10_000) == 4.0  # not yet captured: the newest time


def test_status_flags_are_counted() -> None:
    ring = SampleRing(capacity=10, channels=1)
    ring.note_status(input_overflow=True)
    ring.note_status(input_overflow=False)
    assert ring.status_flags == 2 and ring.overflows == 1
