"""The embedded stack's own credentials: the Postgres and Redis passwords it generated (``secrets/stack.json``,
0600) and the URLs built from them and ops.toml."""

from __future__ import annotations

import os
import secrets
from urllib.parse import quote

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.fsutil import atomic_write_json, read_json

REQUIRED = ("postgres_superuser_password", "postgres_app_password")
NAMES = (*REQUIRED, "redis_password")  # a stack brought up before Redis had a password gets one at its next `up`


def read_secrets(layout: Layout) -> dict[str, str] | None:
    """The stack's passwords, or None when no embedded stack was ever brought up here."""
    data = read_json(layout.secrets_file, {}) or {}
    return data if all(data.get(n) for n in REQUIRED) else None


def ensure_secrets(layout: Layout) -> dict[str, str]:
    """The stack's passwords, created once (what ``stack up`` calls)."""
    data = read_json(layout.secrets_file, {}) or {}
    missing = [n for n in NAMES if not data.get(n)]
    if missing:
        for name in missing:
            data[name] = secrets.token_urlsafe(24)
        layout.secrets_file.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(layout.secrets_file.parent, 0o700)
        atomic_write_json(layout.secrets_file, data, mode=0o600)
    return data


def label_key(layout: Layout) -> bytes:
    """A random key, 0600 beside the stack's other secrets, for keyed digests that name or label something secret
    without revealing it (a container's spec label, a Swarm secret's name)."""
    from aixsss_ops.fsutil import atomic_write

    path = layout.secrets_file.parent / "docker-label.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        atomic_write(path, secrets.token_bytes(32), mode=0o600)
        return path.read_bytes()


def database_url(cfg: OpsConfig, user: str, password: str, database: str | None = None) -> str:
    db = database or cfg.postgres.database
    return f"postgresql://{user}:{password}@{cfg.host}:{cfg.ports.postgres}/{db}?schema=public"


def app_url(cfg: OpsConfig, stack_secrets: dict[str, str]) -> str:
    return database_url(cfg, cfg.postgres.user, stack_secrets["postgres_app_password"])


def admin_url(cfg: OpsConfig, stack_secrets: dict[str, str], database: str = "postgres") -> str:
    return database_url(cfg, cfg.postgres.superuser, stack_secrets["postgres_superuser_password"], database)


def redis_url(cfg: OpsConfig, stack_secrets: dict[str, str] | None) -> str:
    """The stack's Redis, with its password when it has one."""
    pw = (stack_secrets or {}).get("redis_password")
    auth = f":{quote(pw, safe='')}@" if pw else ""
    return f"redis://{auth}{cfg.host}:{cfg.ports.redis}"
