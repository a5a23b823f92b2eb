"""What the checks read: the ``Deployment`` (every address and credential, resolved once with the documented
precedence), the services' env as the env check sees it, and the embedded stack (built once: the checks run in
threads)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops import appspec
from aixsss_ops.context.deployment import KEY, Deployment
from aixsss_ops.context.settings import ENV_FILES, SERVICES

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig
    from aixsss_ops.queue.conn import QueueTarget
    from aixsss_ops.s3 import S3Target
    from aixsss_ops.stack.manager import Stack


@dataclass
class Context:
    dep: Deployment
    timeout: float = 3.0
    migrations_dir: Path | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def cfg(self) -> OpsConfig:
        return self.dep.cfg

    @property
    def environ(self):
        return self.dep.environ

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
        return {svc: self.dep.layout.env_file(svc) for svc in ENV_FILES}

    @property
    def env_sources(self):
        """The env files that exist; with none (a deployment injecting env), the process environment."""
        from aixsss_ops.envcheck import sources

        def load():
            present = {s: p for s, p in self.env_files.items() if p.exists()}
            if present:
                return sources.load(list(present), present, {}, None)
            if self.environ.get("DATABASE_URL"):
                return sources.load(list(SERVICES), {}, {}, dict(self.environ))
            return sources.Sources()

        return self._once("_env_sources", load)

    @property
    def envs(self) -> dict[str, dict[str, str]]:
        return self.env_sources.envs

    # -- the embedded stack (when there is one) --
    @property
    def stack(self) -> Stack:
        def make():
            from aixsss_ops.stack.engines import open_stack

            return open_stack(self.dep)

        return self._once("_stack", make)

    @property
    def has_stack(self) -> bool:
        return self.dep.layout.deploy_dir.exists() or self.dep.layout.supervisor.exists()

    # -- dependencies: the deployment's --
    @property
    def database_url(self) -> str | None:
        s = self._once("_database", lambda: self.dep.database_setting)
        return s.value if s else None

    @property
    def redis(self) -> QueueTarget:
        from aixsss_ops.queue.conn import target

        return self._once("_redis", lambda: target(self.dep))

    @property
    def s3(self) -> S3Target:
        return self._once("_s3", lambda: self.dep.s3)

    @property
    def bucket(self) -> str:
        return self.dep.bucket

    def encryption_keys(self) -> dict[str, str]:
        """The raw API_KEY_ENCRYPTION_KEY of the api and the worker (the process environment overrides both)."""
        if self.environ.get(KEY):
            return {svc: self.environ[KEY] for svc in SERVICES}
        return {svc: self.envs[svc][KEY] for svc in SERVICES if self.envs.get(svc, {}).get(KEY)}

    def migrations(self) -> Path:
        """The migrations of the release the live color runs (else the configured app source)."""
        if self.migrations_dir is not None:
            return self.migrations_dir
        state = self.dep.deploy_state.load()
        live = self.stack.live_color() or (state.active if state else None)
        spec = state.spec(live) if state else None
        return appspec.migrations_dir(self.cfg, spec.path if spec else self.cfg.app_source)

    def secrets(self) -> list[str]:
        """Every secret value the checks might touch, for the output scrubber."""
        return self.dep.secrets()
