"""BullMQ's Redis key layout: ``<prefix>:<queue>:<type>``; the job hash is ``<prefix>:<queue>:<id>``."""

from __future__ import annotations

import base64
from dataclasses import dataclass

DEFAULT_PREFIX = "bull"

# the list/set/hash names BullMQ keeps per queue (bullmq QueueKeys)
KEY_TYPES = (
    "wait", "active", "paused", "waiting-children", "prioritized", "delayed", "completed", "failed",
    "meta", "id", "events", "marker", "stalled", "stalled-check", "limiter", "repeat", "pc", "de",
)

# the state names and their order in BullMQ 5's getJobCounts() result (default types)
JOB_COUNT_TYPES = ("active", "completed", "delayed", "failed", "paused", "prioritized", "waiting", "waiting-children")

# sorted sets scale delayed scores by 0x1000 (timestamp * 4096 + counter)
DELAY_SCORE_FACTOR = 0x1000


@dataclass(frozen=True)
class QueueKeys:
    queue: str
    prefix: str = DEFAULT_PREFIX

    @property
    def base(self) -> str:
        """``bull:<queue>:`` — BullMQ's ``keys['']``, the job-key prefix."""
        return f"{self.prefix}:{self.queue}:"

    def key(self, name: str) -> str:
        return f"{self.prefix}:{self.queue}:{name}"

    def job(self, job_id: str) -> str:
        return f"{self.base}{job_id}"

    def __getattr__(self, name: str) -> str:  # keys.wait, keys.meta, ...
        if name.startswith("_"):
            raise AttributeError(name)
        kind = name.replace("_", "-")
        if kind not in KEY_TYPES:
            raise AttributeError(name)
        return self.key(kind)

    def all_state_keys(self) -> list[str]:
        return [self.key(k) for k in ("meta", "id", "wait", "paused", "active", "prioritized", "delayed",
                                      "waiting-children", "completed", "failed")]

    # how workers name their connections (CLIENT SETNAME)
    def client_names(self) -> tuple[str, ...]:
        """Node BullMQ names connections ``bull:<base64(queue)>``; the Python package uses ``bull:<queue>``."""
        b64 = base64.b64encode(self.queue.encode()).decode()
        return (f"{self.prefix}:{b64}", f"{self.prefix}:{self.queue}")
