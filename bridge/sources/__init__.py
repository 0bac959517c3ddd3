"""Audio sources: each fills a :class:`~bridge.ring.SampleRing` from its own thread."""
