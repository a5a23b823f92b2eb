"""Where the queue lives: resolving the Redis URL and queue name, and opening a client with timeouts.

Precedence (DESIGN.md): ``--redis-url``/``--queue`` flags, then the process environment
(``REDIS_URL``, ``AI_QUEUE_NAME``), then the services' env files ``<state>/env/api.env`` and
``worker.env``, then ops.toml (``redis://{host}:{ports.redis}``, ``app.queue``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aixsss_ops.connsettings import (  # noqa: F401 (read_env_file, service_env_files: re-exported)
    SERVICES,
    read_env_file,
    resolve,
    service_env_files,
    service_envs,
)
from aixsss_ops.errors import ServiceUnavailable, UsageError
from aixsss_ops.output import mask_url

if TYPE_CHECKING:
    import redis

    from aixsss_ops.config import OpsConfig

DEFAULT_TIMEOUT = 3.0
DEFAULT_QUEUE = "ai-jobs"


@dataclass(frozen=True)
class QueueTarget:
    redis_url: str
    queue: str
    redis_url_source: str
    queue_source: str

    def to_dict(self) -> dict:
        return {"redis_url": mask_url(self.redis_url), "queue": self.queue,
                "redis_url_source": self.redis_url_source, "queue_source": self.queue_source}


def resolve_target(
    cfg: OpsConfig,
    redis_url: str | None = None,
    queue: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> QueueTarget:
    envs = service_envs(cfg)
    url = resolve(cfg, "REDIS_URL", redis_url, "--redis-url", environ, lambda: f"redis://{cfg.host}:{cfg.ports.redis}",
                  envs)
    q = resolve(cfg, "AI_QUEUE_NAME", queue, "--queue", environ, lambda: cfg.app.queue, envs)
    if q is None or not q.value.strip():
        raise UsageError("the queue name is empty")
    return QueueTarget(url.value, q.value, url.source, q.source)


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
