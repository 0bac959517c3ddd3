"""a2e-bridge: realtime audio -> LAM Audio-to-Expression -> ARKit face frames over the wire."""

__version__ = "0.1.0"
