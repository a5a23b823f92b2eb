"""Where the app's connection settings come from, for every command that talks to the app's own services.

Precedence (DESIGN.md): the command-line flag, then the process environment as CI sets it
(``DATABASE_URL``, ``REDIS_URL``, ``AI_QUEUE_NAME``, ``API_KEY_ENCRYPTION_KEY``), then the services' env files
``<state>/env/api.env`` and ``worker.env``, then ops.toml (where it has a value).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops import envfile
from aixsss_ops.errors import UsageError

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig

SERVICES = ("api", "worker")


def read_env_file(path: Path) -> dict[str, str] | None:
    """The variables of one env file, or None when it does not exist."""
    try:
        return envfile.parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None


def service_env_files(cfg: OpsConfig) -> dict[str, Path]:
    return {svc: cfg.state / "env" / f"{svc}.env" for svc in SERVICES}


def service_envs(cfg: OpsConfig) -> dict[str, dict[str, str]]:
    """The env files of the api and worker that exist, by service name."""
    out = {}
    for svc, path in service_env_files(cfg).items():
        env = read_env_file(path)
        if env is not None:
            out[svc] = env
    return out


@dataclass(frozen=True)
class Setting:
    value: str
    source: str  # "--flag", "env NAME", "api.env", "ops.toml"


def resolve(
    cfg: OpsConfig,
    name: str,
    flag: str | None = None,
    flag_name: str | None = None,
    environ: Mapping[str, str] | None = None,
    fallback: Callable[[], str | None] | None = None,
    envs: Mapping[str, Mapping[str, str]] | None = None,
) -> Setting | None:
    """One setting by the documented precedence; None when no source has it."""
    environ = os.environ if environ is None else environ
    if flag:
        return Setting(flag, flag_name or f"--{name.lower().replace('_', '-')}")
    if environ.get(name):
        return Setting(environ[name], f"env {name}")
    for svc, env in (service_envs(cfg) if envs is None else envs).items():
        if env.get(name):
            return Setting(env[name], f"{svc}.env")
    if fallback is not None:
        value = fallback()
        if value:
            return Setting(value, "ops.toml")
    return None


def database_url(cfg: OpsConfig, flag: str | None = None, environ: Mapping[str, str] | None = None) -> Setting:
    """The app's DATABASE_URL; the embedded stack's app role when nothing else names one."""

    def embedded() -> str:
        from aixsss_ops.stack.manager import Stack

        return Stack(cfg).app_database_url()

    s = resolve(cfg, "DATABASE_URL", flag, "--database-url", environ, embedded)
    assert s is not None
    return s
