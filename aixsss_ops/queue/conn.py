"""Where the queue lives (the Redis URL and queue name of the ``Deployment``) and a client with timeouts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aixsss_ops.errors import ServiceUnavailable, UsageError
from aixsss_ops.output import mask_url, scrubber

if TYPE_CHECKING:
    import redis

    from aixsss_ops.context.deployment import Deployment

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


def target(dep: Deployment) -> QueueTarget:
    """The deployment's Redis URL and queue name (a ``--redis-url``/``--queue`` flag is one of its sources)."""
    url, q = dep.redis, dep.queue
    return QueueTarget(url.value, q.value, url.source, q.source)


def unavailable(url: str, err: BaseException) -> ServiceUnavailable:
    scrubber.add_url(url)
    reason = " ".join(str(err).split()) or type(err).__name__
    return ServiceUnavailable(
        f"Redis at {mask_url(url)} is unreachable: {reason}",
        hint="start it (`aixsss-ops stack up`, for the embedded Redis), check the managed one, or pass the right "
             "--redis-url / REDIS_URL",
    )


def client(url: str, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
    """A redis-py client that fails within ``timeout`` (no retries, no backoff).

    A URL redis-py cannot parse is a UsageError (exit 2) naming REDIS_URL / --redis-url, never the password."""
    import re

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from aixsss_ops.dburl import encode_userinfo

    scrubber.add_url(url)
    try:
        return redis.Redis.from_url(
            encode_userinfo(url),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
    except ValueError as e:  # the reason can quote a piece of the netloc (a bad port): never show it
        reason = re.sub(r"'[^']*'", "(value)", " ".join(str(e).split()))
        raise UsageError(f"REDIS_URL / --redis-url is not a valid Redis URL ({reason}): {mask_url(url)}",
                         hint="e.g. redis://:****@127.0.0.1:6379/0 (percent-encode @, / and spaces in the "
                              "password)") from None


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
