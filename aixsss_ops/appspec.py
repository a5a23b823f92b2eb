"""The app as ops.toml describes it (``[app]``): its process roles and the placeholders of their commands."""

from __future__ import annotations

import sys
from pathlib import Path

from aixsss_ops.config import OpsConfig, ProcessSpec
from aixsss_ops.errors import OpsError

API = "api"  # the role the proxy routes /api to; it takes the color's port


def roles(cfg: OpsConfig) -> tuple[str, ...]:
    """Every process a color runs, the api first. A role of ``count`` N is N processes: ``<role>``, ``<role>.2``
    … ``<role>.N`` (role names are letters and digits, so the dot is never part of one)."""
    return (API, *others(cfg))


def others(cfg: OpsConfig) -> tuple[str, ...]:
    """The processes besides the api (workers): started once the api passed its gate, drained first. On the
    swarm runtime a role is one service whatever its count (its replicas: runtime/swarm_specs.py)."""
    if cfg.runtime == "swarm":
        return tuple(r for r in cfg.app.processes if r != API)
    return tuple(p for r, spec in cfg.app.processes.items() if r != API
                 for p in (r, *(f"{r}.{n}" for n in range(2, spec.count + 1))))


def role_of(process: str) -> str:
    """The role a process runs (``worker.2`` -> ``worker``)."""
    return process.partition(".")[0]


def spec_of(cfg: OpsConfig, process: str) -> ProcessSpec | None:
    """The description of the role ``process`` runs; None for a name the description does not know."""
    role, _, n = process.partition(".")
    spec = cfg.app.processes.get(role)
    if spec is None or (n and not (n.isdigit() and 2 <= int(n) <= spec.count)):
        return None
    return spec


def env_file_of(role: str, spec: ProcessSpec) -> str | None:
    """The services' env file a process of ``role`` reads: its own setting, else the one named like the role (api,
    worker)."""
    role = role_of(role)
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


def in_release(release: Path, path: Path, what: str) -> Path:
    """``path`` resolved (symlinks followed); an OpsError when that is not inside the release folder ``release``
    (a symlink of the build pointing out of it): nothing outside the release is served or run from."""
    root, resolved = release.resolve(), path.resolve()
    if resolved != root and root not in resolved.parents:
        raise OpsError(f"{what} {resolved} must be inside the release {root}",
                       hint="the build left a symlink pointing out of the release: make it a folder of the release")
    return resolved
