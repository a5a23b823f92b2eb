"""Where the queue lives: resolving the Redis URL and queue name, and opening a client with timeouts.

Precedence (DESIGN.md): ``--redis-url``/``--queue`` flags, then the process environment
(``REDIS_URL``, ``AI_QUEUE_NAME``), then the services' env files ``<state>/env/api.env`` and
``worker.env``, then ops.toml (``redis://{host}:{ports.redis}``, ``app.queue``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops.errors import ServiceUnavailable, UsageError
from aixsss_ops.output import mask_url

if TYPE_CHECKING:
    import redis

    from aixsss_ops.config import OpsConfig

DEFAULT_TIMEOUT = 3.0
DEFAULT_QUEUE = "ai-jobs"
SERVICES = ("api", "worker")


@dataclass(frozen=True)
class QueueTarget:
    redis_url: str
    queue: str
    redis_url_source: str
    queue_source: str

    def to_dict(self) -> dict:
        return {"redis_url": mask_url(self.redis_url), "queue": self.queue,
                "redis_url_source": self.redis_url_source, "queue_source": self.queue_source}


def parse_env_text(text: str) -> dict[str, str]:
    """dotenv ``KEY=value`` lines: comments, blank lines, ``export``, single/double quotes."""
    env: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            quote, value = value[0], value[1:-1]
            if quote == '"':
                value = value.replace("\\n", "\n").replace('\\"', '"')
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        env[key] = value
    return env


def read_env_file(path: Path) -> dict[str, str] | None:
    """The variables of one env file, or None when it does not exist."""
    try:
        return parse_env_text(path.read_text(encoding="utf-8"))
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


def resolve_target(
    cfg: OpsConfig,
    redis_url: str | None = None,
    queue: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> QueueTarget:
    environ = os.environ if environ is None else environ
    url_choice: tuple[str, str] | None = (redis_url, "--redis-url") if redis_url else None
    q_choice: tuple[str, str] | None = (queue, "--queue") if queue else None
    if url_choice is None and environ.get("REDIS_URL"):
        url_choice = (environ["REDIS_URL"], "env REDIS_URL")
    if q_choice is None and environ.get("AI_QUEUE_NAME"):
        q_choice = (environ["AI_QUEUE_NAME"], "env AI_QUEUE_NAME")
    if url_choice is None or q_choice is None:
        for svc, path in service_env_files(cfg).items():
            env = read_env_file(path) or {}
            if url_choice is None and env.get("REDIS_URL"):
                url_choice = (env["REDIS_URL"], f"{svc}.env")
            if q_choice is None and env.get("AI_QUEUE_NAME"):
                q_choice = (env["AI_QUEUE_NAME"], f"{svc}.env")
    if url_choice is None:
        url_choice = (f"redis://{cfg.host}:{cfg.ports.redis}", "ops.toml")
    if q_choice is None:
        q_choice = (cfg.app.queue, "ops.toml")
    if not q_choice[0].strip():
        raise UsageError("the queue name is empty")
    return QueueTarget(url_choice[0], q_choice[0], url_choice[1], q_choice[1])


def unavailable(url: str, err: BaseException) -> ServiceUnavailable:
    reason = " ".join(str(err).split()) or type(err).__name__
    return ServiceUnavailable(
        f"Redis at {mask_url(url)} is unreachable: {reason}",
        hint="start it (aixsss-ops stack up) or pass the right --redis-url / REDIS_URL",
    )


def client(url: str, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
    """A redis-py client that fails within ``timeout`` (no retries, no backoff)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    except ValueError as e:
        raise UsageError(f"invalid Redis URL {mask_url(url)}: {e}") from None


@contextlib.contextmanager
def connect(url: str, timeout: float = DEFAULT_TIMEOUT) -> Iterator[redis.Redis]:
    """Yield a client; connection problems become one-line :class:`ServiceUnavailable` errors."""
    import redis

    r = client(url, timeout)
    try:
        yield r
    except redis.AuthenticationError as e:  # a ConnectionError subclass: test it first
        raise ServiceUnavailable(f"Redis at {mask_url(url)} refused the credentials: {e}") from None
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise unavailable(url, e) from None
    finally:
        with contextlib.suppress(Exception):
            r.close()
