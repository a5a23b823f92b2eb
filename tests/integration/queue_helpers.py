"""Helpers for the queue tests: jobs in every BullMQ state, produced by the ``bullmq`` Python package."""

from __future__ import annotations

import asyncio
import time

import redis

from tests.conftest import poll  # noqa: F401 (re-exported for the test modules)


async def apoll(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = await predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def sync_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


class Holder:
    """A processor: ``ok`` jobs succeed, ``fail`` jobs raise, ``hold`` jobs wait for ``release``."""

    def __init__(self):
        self.release = asyncio.Event()
        self.done: list[str] = []

    async def __call__(self, job, token):
        if job.name == "fail":
            raise RuntimeError(f"boom {job.id}")
        if job.name == "hold":
            await self.release.wait()
        self.done.append(job.id)
        return "ok"


async def populate_every_state(url: str, queue: str, *, child_queue: str | None = None) -> dict:
    """Jobs in every state: completed beyond removeOnComplete, failed with attempts exhausted, one held
    active by a running worker (concurrency 1), waiting, delayed, prioritized, waiting-children.

    Returns ``{"worker": Worker, "holder": Holder, "queue": Queue}``; the caller closes them.
    """
    from bullmq import FlowProducer, Queue, Worker

    q = Queue(queue, {"connection": url})
    holder = Holder()
    w = Worker(queue, holder, {"connection": url, "concurrency": 1, "drainDelay": 1})
    keep = {"removeOnComplete": {"count": 3}, "removeOnFail": {"count": 500}}
    for i in range(6):
        await q.add("ok", {"i": i}, keep)
    for i in range(2):
        await q.add("fail", {"i": i}, {**keep, "attempts": 2})
    r = sync_redis(url)
    await apoll(lambda: _ready(r.zcard(f"bull:{queue}:completed") == 3 and r.zcard(f"bull:{queue}:failed") == 2),
                what="completed and failed jobs")
    await q.add("hold", {}, keep)
    await apoll(lambda: _ready(r.llen(f"bull:{queue}:active") == 1), what="a held active job")
    for i in range(4):
        await q.add("wait", {"i": i})
    for i in range(2):
        await q.add("later", {"i": i}, {"delay": 3_600_000})
    for i in range(3):
        await q.add("prio", {"i": i}, {"priority": 5 + i})
    fp = FlowProducer({"connection": url})
    await fp.add({"name": "parent", "queueName": queue, "data": {},
                  "children": [{"name": "child", "queueName": child_queue or f"{queue}-children", "data": {}}]})
    await fp.close()
    return {"worker": w, "holder": holder, "queue": q}


async def _ready(v):
    return v


async def close_all(ctx: dict) -> None:
    ctx["holder"].release.set()
    await ctx["worker"].close()
    await ctx["queue"].close()
