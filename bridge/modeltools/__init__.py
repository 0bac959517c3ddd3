"""Model tooling: build synthetic models, convert, compare, inspect (``a2e-bridge models ...``).

Nothing on the running bridge's path imports this package, except ``synth`` and ``demo``
for the synthetic presets (built once, on first use).
"""
