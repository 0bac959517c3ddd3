"""Command families registered on the ``a2e-bridge`` group by bridge.cli."""
