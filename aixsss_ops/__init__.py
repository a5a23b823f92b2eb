"""aixsss-ops: the operations CLI for AIXSSS deployments."""

__version__ = "0.1.0"
