"""Run statistics: a block of latencies recorded at once counts as the same frames one by one."""

from __future__ import annotations

import numpy as np

from bridge.stats import Histogram, RunStats


def test_a_block_of_latencies_is_recorded_as_the_same_frames_one_by_one() -> None:
    ms = np.array([0.0, 0.049, 0.05, 3.3, 17.26, 4999.0, 9000.0, -1.0, 250.0])
    one, block = Histogram(), Histogram()
    for v in ms:
        one.add(float(v))
    block.add_many(ms)
    block.add_many(ms[:0])
    assert (one.counts == block.counts).all() and one.n == block.n == ms.shape[0]
    assert one.max == block.max and abs(one.total - block.total) < 1e-9
    assert one.summary() == block.summary()
    stats = RunStats()
    stats.record_latencies(ms)
    assert stats.frames_published == ms.shape[0] and stats.latency.n == ms.shape[0]
    assert stats.interval.n == 0  # the block's frames do not time the send interval
