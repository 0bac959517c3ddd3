"""Voice and face in sync: latency published per performer, the voice passed through delayed.

``clock``: monotonic stamps as time of day; ``latency``: each performer's running p50/p95;
``report``: ``/a2e/latency`` to the OSC outputs that ask; ``devices``: output devices;
``passthrough``: the output stream (its callback only copies from a ring); ``delay``: how
far behind the capture the voice is played and when that may change; ``drift``: the two
devices' clocks and how far apart they drift; ``hub``: what the engine holds (one object,
a few calls).
"""
