"""The command line (``a2e-bridge``); the group is :func:`bridge.cli.main.main`."""
