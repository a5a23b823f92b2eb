"""The app as ops.toml describes it (``[app]``): its process roles and the placeholders of their commands."""

from __future__ import annotations

import sys
from pathlib import Path

from aixsss_ops.config import OpsConfig, ProcessSpec

API = "api"  # the role the proxy routes /api to; it takes the color's port


def roles(cfg: OpsConfig) -> tuple[str, ...]:
    """Every process role, the api first."""
    return (API, *(r for r in cfg.app.processes if r != API))


def others(cfg: OpsConfig) -> tuple[str, ...]:
    """The roles besides the api (workers): started once the api passed its gate, drained first."""
    return tuple(r for r in cfg.app.processes if r != API)


def env_file_of(role: str, spec: ProcessSpec) -> str | None:
    """The services' env file a process reads: its own setting, else the one named like it (api, worker)."""
    return spec.env_file or (role if role in ("api", "worker") else None)


def fill(text: str, *, release: Path, color: str, version: str, host: str, python: str = sys.executable) -> str:
    """``{release}``, ``{python}``, ``{color}``, ``{version}`` and ``{host}`` in a command, folder or value."""
    for key, value in (("release", str(release)), ("python", python), ("color", color), ("version", version),
                       ("host", host)):
        text = text.replace("{" + key + "}", value)
    return text


def migrations_dir(cfg: OpsConfig, root: Path) -> Path:
    """The Prisma migrations folder of a release (or of the app source) ``root``."""
    return root / cfg.app.migrations
