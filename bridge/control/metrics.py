"""``GET /metrics``: the bridge's counters in Prometheus text format (prometheus-client).

Nothing here runs in the hop loop: a collector of our own reads the engine's counters and
histograms at scrape time (the run statistics already count every frame), in a registry
of its own per bridge, so several bridges in one process never collide.

Metrics (``performer`` label where the figure is a performer's, ``output`` for outputs):

* ``a2e_frames_published_total``, ``a2e_frames_dropped_total`` {performer}
* ``a2e_latency_seconds`` (capture -> send, every performer), ``a2e_inference_seconds``
  (one batched model call) histograms
* ``a2e_input_level_dbfs`` {performer}: the last frame's RMS level
* ``a2e_performer_latency_seconds`` {performer, quantile 0.5 / 0.95}: each performer's own
  frames over the last 10 s (``a2e_latency_seconds`` is every performer's, since the start)
* ``a2e_output_packets_total``, ``a2e_output_errors_total`` {output}; ``a2e_output_up`` {output}
* ``a2e_commands_total`` {result}, ``a2e_up`` (1 while frames flow), ``a2e_model_info`` {model, provider}
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge.control.live import db

#: histogram buckets, seconds (a frame is 33 ms; 250 ms is the default latency budget)
BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.033, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _buckets(h: Any) -> tuple[list[tuple[str, float]], float]:
    """A run-stats Histogram (ms bins) as cumulative Prometheus buckets in seconds, and its sum."""
    cum = np.cumsum(h.counts)
    out = []
    for le in BUCKETS:
        i = min(int(round(le * 1000.0 / h.resolution)), cum.shape[0]) - 1
        out.append((repr(le), float(cum[i]) if i >= 0 else 0.0))
    out.append(("+Inf", float(h.n)))
    return out, h.total / 1000.0


class BridgeCollector(Collector):
    """Reads a bridge (and its monitor) at scrape time."""

    def __init__(self, bridge: Any, monitor: Any) -> None:
        self.bridge, self.monitor = bridge, monitor

    def collect(self) -> Iterator[Metric]:
        b = self.bridge
        s = b.stats
        names = [p.name for p in b.performers]
        pub = CounterMetricFamily("a2e_frames_published", "Frames sent to the outputs", labels=["performer"])
        drop = CounterMetricFamily("a2e_frames_dropped", "Frames skipped (deadline passed or audio lost)",
                                   labels=["performer"])  # fmt: skip
        level = GaugeMetricFamily("a2e_input_level_dbfs", "RMS level of the newest frame's audio, dBFS",
                                  labels=["performer"])  # fmt: skip
        recent = GaugeMetricFamily("a2e_performer_latency_seconds",
                                   "A performer's frame latency over its last 10 s, by quantile",
                                   labels=["performer", "quantile"])  # fmt: skip
        rms = b.control.live.state.rms
        for i, p in enumerate(b.performers):
            pub.add_metric([names[i]], p.published)
            drop.add_metric([names[i]], p.scheduler.dropped)
            level.add_metric([names[i]], round(db(float(rms[i])), 2))
            for q, ms in zip(("0.5", "0.95"), b.sync.tracker.percentiles(i), strict=True):
                if ms is not None:
                    recent.add_metric([names[i], q], ms / 1000.0)
        yield pub
        yield drop
        yield level
        yield recent
        buckets, total = _buckets(s.latency)
        yield HistogramMetricFamily("a2e_latency_seconds", "Capture of a frame's last sample to its send",
                                    buckets=buckets, sum_value=total)  # fmt: skip
        buckets, total = _buckets(s.inference)
        yield HistogramMetricFamily("a2e_inference_seconds", "One (batched) model call",
                                    buckets=buckets, sum_value=total)  # fmt: skip
        packets = CounterMetricFamily("a2e_output_packets", "Packets (messages) sent", labels=["output"])
        errors = CounterMetricFamily("a2e_output_errors", "Failed sends and connects", labels=["output"])
        up = GaugeMetricFamily("a2e_output_up", "1 receiver reachable, 0 unreachable, -1 unknown",
                               labels=["output"])  # fmt: skip
        for oid, o in zip(b.control.live.output_ids, b.outputs, strict=True):
            st = o.stats()
            packets.add_metric([oid], st.get("sent", 0))
            errors.add_metric([oid], st.get("errors", 0))
            state = o.health().state
            up.add_metric([oid], 1 if state == "ok" else 0 if state == "unreachable" else -1)
        yield packets
        yield errors
        yield up
        cmds = CounterMetricFamily("a2e_commands", "Console and OSC commands", labels=["result"])
        cmds.add_metric(["accepted"], b.control.commands.accepted)
        cmds.add_metric(["refused"], b.control.commands.refused)
        yield cmds
        alive = GaugeMetricFamily("a2e_up", "1 while frames flow to the outputs")
        alive.add_metric([], 1 if self.monitor.snapshot()["flowing"] else 0)
        yield alive
        info = GaugeMetricFamily("a2e_model_info", "The model running", labels=["model", "provider"])
        info.add_metric([b.model.preset, b.runner.provider], 1)
        yield info


class Metrics:
    """One registry per bridge; :meth:`render` is the /metrics body."""

    def __init__(self, bridge: Any, monitor: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BridgeCollector(bridge, monitor))

    def render(self) -> bytes:
        return generate_latest(self.registry)
