"""The precedence of every connection setting, in one place.

A setting of the app's own services (``DATABASE_URL``, ``REDIS_URL``, ``AI_QUEUE_NAME``, ``S3_*``,
``API_KEY_ENCRYPTION_KEY``…) comes from the first of: the command-line flag, the process environment as CI sets
it, the services' env files (``<state>/env/api.env``, then ``worker.env``), ops.toml / the embedded stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops import envfile
from aixsss_ops.errors import UsageError

SERVICES = ("api", "worker")  # the env files that carry connection settings, in the order they are read
ENV_FILES = ("api", "worker", "web")


@dataclass(frozen=True)
class Setting:
    value: str
    source: str  # "--database-url", "env DATABASE_URL", "api.env", "ops.toml"


def read_env_file(path: Path) -> dict[str, str] | None:
    """The variables of one env file, or None when it does not exist (a malformed line is an error naming it)."""
    try:
        return envfile.parse(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None


@dataclass
class Sources:
    """The inputs of the precedence: flags given (variable -> (flag name, value)), the process environment, and
    the services' env files (read once, on first use)."""

    environ: Mapping[str, str]
    env_files: Mapping[str, Path]
    flags: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    _envs: dict[str, dict[str, str]] | None = field(default=None, repr=False)

    @property
    def envs(self) -> dict[str, dict[str, str]]:
        """The env files that exist, by service."""
        if self._envs is None:
            envs = {}
            for svc, path in self.env_files.items():
                env = read_env_file(path)
                if env is not None:
                    envs[svc] = env
            self._envs = envs
        return self._envs

    def get(self, name: str, default: str | None = None, services: tuple[str, ...] = SERVICES) -> Setting | None:
        """``name`` by the precedence; ``default`` (ops.toml or the embedded stack) last; None when nothing has it."""
        flag = self.flags.get(name)
        if flag and flag[1]:
            return Setting(flag[1], flag[0])
        if self.environ.get(name):
            return Setting(self.environ[name], f"env {name}")
        for svc in services:
            value = self.envs.get(svc, {}).get(name)
            if value:
                return Setting(value, f"{svc}.env")
        return Setting(default, "ops.toml") if default else None
