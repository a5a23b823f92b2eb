"""``Deployment``: everything a command needs to know about the deployment it operates, resolved once.

Built from ops.toml (``OpsConfig``), the flags of the command, the process environment, the services' env files
and the embedded stack's secrets, with the precedence of :mod:`aixsss_ops.context.settings`. It holds the layout,
the app's and the admin's database targets, Redis and the queue name, the S3 target and bucket, the keys and the
typed deploy state. Every secret it hands out is registered with the output scrubber first, so no message can
show it. It never starts, stops or asks a service: it only says where things are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from urllib.parse import urlsplit

from aixsss_ops.config import OpsConfig
from aixsss_ops.context import embedded
from aixsss_ops.context.deploystate import DeployState
from aixsss_ops.context.layout import Layout
from aixsss_ops.context.settings import ENV_FILES, SERVICES, Setting, Sources
from aixsss_ops.errors import UsageError
from aixsss_ops.output import scrubber, secret_values
from aixsss_ops.s3 import S3Target

KEY = "API_KEY_ENCRYPTION_KEY"
PREVIOUS_KEY = "API_KEY_ENCRYPTION_KEY_PREVIOUS"
NEXT_KEY = "API_KEY_ENCRYPTION_KEY_NEXT"
# flags a command may pass, by the variable they stand for
FLAGS = {"DATABASE_URL": "--database-url", "REDIS_URL": "--redis-url", "AI_QUEUE_NAME": "--queue", KEY: "--key"}
EMBEDDED_ADMIN = "the embedded stack's superuser"


def _password(url: str | None) -> str | None:
    try:
        return urlsplit(url or "").password
    except ValueError:
        return None


class Deployment:
    def __init__(self, cfg: OpsConfig, *, environ: Mapping[str, str] | None = None,
                 flags: Mapping[str, str | None] | None = None):
        self.cfg = cfg
        self.layout = Layout(cfg.state)
        self.environ: Mapping[str, str] = dict(os.environ) if environ is None else environ
        given = {name: (FLAGS.get(name, name), value) for name, value in (flags or {}).items() if value}
        for name, (_flag, value) in given.items():
            scrubber.add(value if name == KEY else _password(value))
        self.sources = Sources(self.environ, {svc: self.layout.env_file(svc) for svc in ENV_FILES}, given)
        self.deploy_state = DeployState(self.layout.deploy_dir)

    def with_flags(self, **flags: str | None) -> Deployment:
        """The same deployment seen through a command's flags (``DATABASE_URL="…"``)."""
        return Deployment(self.cfg, environ=self.environ, flags={**{k: v for k, (_f, v) in self.sources.flags.items()},
                                                                 **flags})

    def setting(self, name: str, default: str | None = None, services: tuple[str, ...] = SERVICES) -> Setting | None:
        return self.sources.get(name, default, services)

    @property
    def envs(self) -> dict[str, dict[str, str]]:
        """The services' env files that exist (api, worker, web)."""
        return self.sources.envs

    # -- the embedded stack --
    @cached_property
    def stack_secrets(self) -> dict[str, str] | None:
        """The embedded stack's Postgres passwords; None where no stack was brought up (nothing is invented)."""
        sec = embedded.read_secrets(self.layout)
        if sec:
            scrubber.add(*sec.values())
        return sec

    @property
    def url(self) -> str:
        """The proxy: where the app answers."""
        return f"http://{self.cfg.host}:{self.cfg.ports.proxy}"

    # -- Postgres --
    @cached_property
    def database_setting(self) -> Setting | None:
        """The app's DATABASE_URL; the embedded stack's app role when nothing else names one."""
        sec = self.stack_secrets
        s = self.setting("DATABASE_URL", embedded.app_url(self.cfg, sec) if sec else None)
        if s:
            scrubber.add(_password(s.value))
        return s

    @property
    def database(self) -> Setting:
        s = self.database_setting
        if s is None:
            raise UsageError("no DATABASE_URL: pass --database-url, set DATABASE_URL in the environment, write it to "
                             f"{self.layout.env_file('api')}, or run `aixsss-ops stack up`",
                             hint="e.g. postgresql://user:password@host:5432/aixsss?schema=public")
        return s

    @cached_property
    def admin_database(self) -> Setting:
        """What backups and restores connect with: the app's database, as the embedded stack's superuser where it is
        the embedded stack's (a URL given by flag or environment is used as given)."""
        app = self.database_setting
        sec = self.stack_secrets
        if app is not None and (app.source.startswith(("--", "env ")) or sec is None or not self._embedded_db(app)):
            return app
        if sec is None:
            return self.database  # raises: nothing names a database
        return Setting(embedded.admin_url(self.cfg, sec, self.cfg.postgres.database), EMBEDDED_ADMIN)

    def _embedded_db(self, s: Setting) -> bool:
        try:
            u = urlsplit(s.value)
            return ((u.hostname, u.port or 5432, u.path.lstrip("/"))
                    == (self.cfg.host, self.cfg.ports.postgres, self.cfg.postgres.database))
        except ValueError:
            return False

    def embedded_admin_url(self, database: str = "postgres") -> str:
        """The embedded stack's superuser URL (``stack up`` creates the secrets before it asks)."""
        sec = self.stack_secrets or embedded.ensure_secrets(self.layout)
        scrubber.add(*sec.values())
        return embedded.admin_url(self.cfg, sec, database)

    # -- Redis and the queue --
    @cached_property
    def redis(self) -> Setting:
        s = self.setting("REDIS_URL", embedded.redis_url(self.cfg, self.stack_secrets))
        scrubber.add(_password(s.value))
        return s

    @cached_property
    def queue(self) -> Setting:
        s = self.setting("AI_QUEUE_NAME", self.cfg.app.queue)
        if s is None or not s.value.strip():
            raise UsageError("the queue name is empty")
        return s

    # -- the object store --
    @cached_property
    def s3(self) -> S3Target:
        c = self.cfg
        secret = self.setting("S3_SECRET_KEY", c.s3.secret_key.get_secret_value())
        t = S3Target(self.setting("S3_ENDPOINT", f"http://{c.host}:{c.ports.s3}").value,
                     self.setting("S3_ACCESS_KEY", c.s3.access_key).value,
                     secret.value if secret else "",
                     self.setting("S3_REGION", c.s3.region).value)
        scrubber.add(t.secret_key)
        return t

    @cached_property
    def bucket(self) -> str:
        return self.setting("S3_BUCKET", self.cfg.s3.bucket).value

    # -- keys --
    def api_key(self, name: str = KEY) -> Setting | None:
        """The raw provider-key encryption key (``name``: the key, or the previous/next one)."""
        s = self.setting(name)
        if s:
            scrubber.add(s.value)
        return s

    @property
    def backup_key(self) -> Setting | None:
        """The raw backup encryption/signing key: the process environment's variable ``backup.encryption_key_env``
        (an operator's secret, never in the services' env files)."""
        name = self.cfg.backup.encryption_key_env
        raw = self.environ.get(name)
        if not raw:
            return None
        scrubber.add(raw)
        return Setting(raw, f"${name}")

    def secrets(self) -> list[str]:
        """Every secret value within reach, for the output scrubber (what a failing check might print)."""
        out = secret_values(self.envs) + secret_values({"environ": dict(self.environ)})
        out.append(self.cfg.s3.secret_key.get_secret_value())
        if self.stack_secrets:
            out += list(self.stack_secrets.values())
        for s in (self.database_setting, self.redis):
            if s:
                out.append(_password(s.value))
        return [s for s in out if s]
