"""Who may reach the console: loopback needs nothing, anything wider needs the token."""

from __future__ import annotations

import hmac
import ipaddress


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison (an attacker learns nothing from the reply's timing)."""
    return hmac.compare_digest(given.encode(), token.encode())
