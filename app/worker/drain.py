"""A graceful stop that processes every job this worker has moved to active.

bullmq's Python ``Worker.close()`` waits only for the tasks it holds when called. A fetch in flight at that moment
still moves a job to active a round trip later, and nothing processes it: the job stays active until another
worker's stalled check moves it back (one to three ``stalledInterval``s, 30-90 s by default). Node BullMQ waits for
such jobs (taskforcesh/bullmq#3059, #3349); the Python port 3.4 does not. Here a fetch that returns once the
worker is closing processes its job itself, and ``drain`` closes the connections only after the worker's loop has
ended and every job it started is done.

The loop of a closing worker also ends at the first pass that brings no job (the cancelled idle fetch is one), and
closes the lock renewal as it ends, while jobs may still run: their locks would expire after ``lockDuration``, their
completion be refused, and another worker's stalled check run them again. Here the renewal closes once the last
running job is done.
"""

from __future__ import annotations

import asyncio

import bullmq


class Worker(bullmq.Worker):
    """A bullmq worker whose late fetches are processed; build it with ``autorun: False`` and ``start`` it."""

    async def run(self):
        close = self.lockManager.close

        async def close_when_done() -> None:  # the loop's own end calls it; the jobs still running keep their locks
            while self.closing and (running := [t for t in self.processing if not t.done()]):
                await asyncio.wait(running)
            await close()

        self.lockManager.close = close_when_done
        return await super().run()

    async def getNextJob(self, token: str):
        job = await super().getNextJob(token)
        if job is not None and self.closing:
            await self.processJob(job, token)  # the fetch task is what the loop and ``drain`` wait on
            return None
        return job


def start(worker: Worker) -> asyncio.Task:
    """The worker's loop, as the task ``drain`` waits on."""
    return asyncio.ensure_future(worker.run())


async def drain(worker: Worker, loop: asyncio.Task) -> None:
    """Stop fetching, finish every job moved to active (those a fetch brings back meanwhile too), then close."""
    worker.closing = True  # the loop starts no fetch and ends once a pass brings no job
    if worker.waiting is not None:
        worker.waiting.cancel()  # an idle blocking wait: it has moved no job
    await loop
    while pending := [t for t in worker.processing if not t.done()]:
        await asyncio.wait(pending)
    await worker.close()
