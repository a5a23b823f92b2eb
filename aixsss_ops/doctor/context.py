"""What the checks read: the configuration, the services' env and where each dependency is.

Connection settings follow DESIGN.md's precedence: the process environment as CI sets it
(``DATABASE_URL``, ``REDIS_URL``, ``AI_QUEUE_NAME``, ``API_KEY_ENCRYPTION_KEY``, ``S3_*``), then the services'
env files, then ops.toml. Everything is resolved lazily and once (the checks run in threads).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig
    from aixsss_ops.s3 import S3Target
    from aixsss_ops.stack.manager import Stack


@dataclass
class Context:
    cfg: OpsConfig
    timeout: float = 3.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    migrations_dir: Path | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def net_timeout(self) -> float:
        """What one network call may take: a little under the check's own timeout."""
        return max(0.5, min(2.0, self.timeout * 0.6))

    def _once(self, name: str, fn):
        with self._lock:
            if name not in self.__dict__:
                self.__dict__[name] = fn()
            return self.__dict__[name]

    # -- the services' env --
    @property
    def env_files(self) -> dict[str, Path]:
        return {svc: self.cfg.state / "env" / f"{svc}.env" for svc in ("api", "worker", "web")}

    @property
    def env_sources(self):
        """The env files that exist; with none (a deployment injecting env), the process environment."""
        from aixsss_ops.envcheck import sources

        def load():
            present = {s: p for s, p in self.env_files.items() if p.exists()}
            if present:
                return sources.load(list(present), present, {}, None)
            if self.environ.get("DATABASE_URL"):
                return sources.load(["api", "worker"], {}, {}, dict(self.environ))
            return sources.Sources()

        return self._once("_env_sources", load)

    @property
    def envs(self) -> dict[str, dict[str, str]]:
        return self.env_sources.envs

    def _setting(self, name: str, *services: str) -> str | None:
        if self.environ.get(name):
            return self.environ[name]
        for svc in services or ("api", "worker"):
            v = self.envs.get(svc, {}).get(name)
            if v:
                return v
        return None

    # -- the embedded stack (when there is one) --
    @property
    def stack(self) -> Stack:
        def make():
            from aixsss_ops.stack.manager import Stack

            return Stack(self.cfg)

        return self._once("_stack", make)

    @property
    def has_stack(self) -> bool:
        return (self.cfg.state / "deploy").exists() or (self.cfg.state / "supervisor").exists()

    # -- dependencies --
    @property
    def database_url(self) -> str | None:
        url = self._setting("DATABASE_URL")
        if url:
            return url
        if self.stack.layout.secrets_file.exists():
            return self.stack.app_database_url()
        return None

    @property
    def redis(self):
        from aixsss_ops.queue.conn import resolve_target

        return self._once("_redis", lambda: resolve_target(self.cfg, environ=self.environ))

    @property
    def s3(self) -> S3Target:
        from aixsss_ops.s3 import S3Target

        endpoint = self._setting("S3_ENDPOINT")
        if endpoint:
            return S3Target(endpoint, self._setting("S3_ACCESS_KEY") or "", self._setting("S3_SECRET_KEY") or "",
                            self._setting("S3_REGION") or "us-east-1")
        return self.stack.s3_target()

    @property
    def bucket(self) -> str:
        return self._setting("S3_BUCKET") or self.cfg.s3.bucket

    def encryption_keys(self) -> dict[str, str]:
        """The raw API_KEY_ENCRYPTION_KEY of the api and the worker (the process environment overrides both)."""
        if self.environ.get("API_KEY_ENCRYPTION_KEY"):
            return {"api": self.environ["API_KEY_ENCRYPTION_KEY"], "worker": self.environ["API_KEY_ENCRYPTION_KEY"]}
        return {svc: self.envs[svc]["API_KEY_ENCRYPTION_KEY"] for svc in ("api", "worker")
                if self.envs.get(svc, {}).get("API_KEY_ENCRYPTION_KEY")}

    def migrations(self) -> Path:
        """The migrations of the release the live color runs (else the configured app source)."""
        if self.migrations_dir is not None:
            return self.migrations_dir
        state = self.stack.deploy_state.load() or {}
        live = self.stack.live_color() or state.get("active")
        spec = (state.get("colors") or {}).get(live) if live else None
        return Path(spec["source"]) / "migrations" if spec else self.cfg.app_source / "migrations"

    def secrets(self) -> list[str]:
        """Every secret value the checks might touch, for the output scrubber."""
        from urllib.parse import urlsplit

        from aixsss_ops.envcheck.sources import secret_values

        out = secret_values(self.envs) + secret_values({"environ": dict(self.environ)})
        out.append(self.cfg.s3.secret_key.get_secret_value())
        for url in (self.database_url, self.redis.redis_url):
            try:
                pw = urlsplit(url or "").password
            except ValueError:
                pw = None
            if pw:
                out.append(pw)
        return out
