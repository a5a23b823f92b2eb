"""The bundled worker's graceful stop on a real Redis: a job a fetch moves to active while the worker closes is
processed before the connections close, not left active for another worker's stalled check; and a job still running
keeps its lock until it ends."""

from __future__ import annotations

import asyncio
import importlib.util
import uuid

import bullmq

from tests.conftest import REPO


def drain_module():
    spec = importlib.util.spec_from_file_location("bundled_worker_drain", REPO / "app" / "worker" / "drain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def stop_during_a_fetch(url: str, worker_class, stop) -> tuple[list[str], str, int, str]:
    """One job; the worker's fetch moves it to active and is held there while ``stop(worker, loop)`` begins."""
    name = f"drain-{uuid.uuid4().hex[:8]}"
    queue = bullmq.Queue(name, {"connection": url})
    processed: list[str] = []

    async def process(job, token):
        await asyncio.sleep(0.2)
        processed.append(job.id)
        return "done"

    worker = worker_class(name, process, {"connection": url, "concurrency": 2, "autorun": False})
    moved, release = asyncio.Event(), asyncio.Event()
    move = worker.moveToActive

    async def held_move(token):
        job = await move(token)
        if job is not None:
            moved.set()
            await release.wait()  # the job is active in Redis; the fetch has not returned it yet
        return job

    worker.moveToActive = held_move
    job = await queue.add("j", {})
    loop = asyncio.ensure_future(worker.run())
    await asyncio.wait_for(moved.wait(), 10)
    stopping = asyncio.ensure_future(stop(worker, loop))
    await asyncio.sleep(0.3)  # the stop has begun and waits
    release.set()
    await asyncio.wait_for(stopping, 20)
    state = await queue.getJobState(job.id)
    active = (await queue.getJobCounts("active"))["active"]
    await queue.obliterate(force=True)
    await queue.close()
    return processed, state, active, job.id


def test_a_job_moved_to_active_while_the_worker_stops_is_processed_before_it_closes(redis_server):
    drain = drain_module()
    processed, state, active, job_id = asyncio.run(stop_during_a_fetch(redis_server.url, drain.Worker, drain.drain))
    assert (processed, state, active) == ([job_id], "completed", 0)


def test_bullmq_close_alone_leaves_that_job_active(redis_server):
    """What ``drain`` is for: bullmq's own worker and close return with the job still active and never processed
    (the day this fails, bullmq waits for late fetches itself and ``drain`` can go)."""

    async def close_only(worker, loop):
        await worker.close()
        loop.cancel()

    processed, state, active, _ = asyncio.run(stop_during_a_fetch(redis_server.url, bullmq.Worker, close_only))
    assert (processed, state, active) == ([], "active", 1)


async def lock_during_a_drained_job(url: str) -> tuple[list[bool], str]:
    """A job longer than the lock's duration runs while the worker drains (its idle fetch cancelled, so the loop
    ends at once): whether the job's lock was present at each sample, and the job's end state."""
    drain = drain_module()
    name = f"drain-{uuid.uuid4().hex[:8]}"
    queue = bullmq.Queue(name, {"connection": url})
    started, finish = asyncio.Event(), asyncio.Event()

    async def process(job, token):
        started.set()
        await finish.wait()
        return "done"

    worker = drain.Worker(name, process, {"connection": url, "concurrency": 2, "autorun": False,
                                          "lockDuration": 1000, "lockRenewTime": 500})
    job = await queue.add("long", {})
    loop = drain.start(worker)
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.3)  # the second slot's fetch is waiting for a job
    stopping = asyncio.ensure_future(drain.drain(worker, loop))
    client = queue.redisConnection.conn
    seen = []
    for _ in range(30):  # 3 s: three lock durations
        await asyncio.sleep(0.1)
        seen.append(bool(await client.exists(f"bull:{name}:{job.id}:lock")))
    finish.set()
    await asyncio.wait_for(stopping, 20)
    state = await queue.getJobState(job.id)
    await queue.obliterate(force=True)
    await queue.close()
    return seen, state


def test_a_job_still_running_keeps_its_lock_while_the_worker_drains(redis_server):
    """Another worker's stalled check takes back an active job whose lock expired: the draining worker renews the
    locks of its running jobs until the last one ends."""
    seen, state = asyncio.run(lock_during_a_drained_job(redis_server.url))
    assert all(seen) and state == "completed", (str(seen), state)
