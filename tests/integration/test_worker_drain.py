"""The bundled worker's graceful stop on a real Redis: a job a fetch moves to active while the worker closes is
processed before the connections close, not left active for another worker's stalled check."""

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
