"""`queue stats` against a real Redis, with jobs produced by the bullmq package in every state."""

from __future__ import annotations

import asyncio
import time

import pytest

from aixsss_ops.errors import ServiceUnavailable
from aixsss_ops.queue.inspect import stats
from aixsss_ops.queue.keys import JOB_COUNT_TYPES
from tests.integration.queue_helpers import close_all, populate_every_state, sync_redis


def test_counts_equal_getjobcounts_in_every_state(redis_server, queue_name):
    async def scenario():
        ctx = await populate_every_state(redis_server.url, queue_name)
        try:
            mine = await asyncio.to_thread(stats, redis_server.url, queue_name)
            # BullMQ's count script may mutate (legacy markers): call it after our read
            theirs = await _counts(redis_server.url, queue_name)
            return mine, theirs
        finally:
            await close_all(ctx)

    mine, theirs = asyncio.run(scenario())
    assert mine.counts == theirs
    # every state is really populated, so the equality is not 0 == 0
    for state in JOB_COUNT_TYPES:
        if state != "paused":
            assert mine.counts[state] > 0, state
    assert mine.counts["completed"] == 3  # 6 completed, removeOnComplete keeps 3
    assert mine.counts["active"] == 1 and mine.counts["failed"] == 2
    assert mine.exists and not mine.paused
    assert mine.oldest_waiting_job is not None and mine.oldest_waiting_age_s >= 0
    assert mine.failure_rate is not None and 0 < mine.failure_rate <= 1


def test_6x_pause_keeps_jobs_in_wait_and_they_count_as_paused(redis_server, queue_name):
    from bullmq import Queue

    async def scenario():
        q = Queue(queue_name, {"connection": redis_server.url})
        await q.pause()  # the Python package's (6.x) pause: a meta flag, jobs stay in 'wait'
        for i in range(5):
            await q.add("wait", {"i": i})
        await q.add("prio", {}, {"priority": 3})
        mine = await asyncio.to_thread(stats, redis_server.url, queue_name)
        theirs = await q.getJobCounts(*JOB_COUNT_TYPES)
        await q.close()
        return mine, theirs

    mine, theirs = asyncio.run(scenario())
    r = sync_redis(redis_server.url)
    assert r.llen(f"bull:{queue_name}:wait") == 5 and not r.exists(f"bull:{queue_name}:paused")
    assert mine.paused and mine.layout == "6.x"
    assert theirs["waiting"] == 5 and theirs["paused"] == 0  # raw 6.x numbers
    assert mine.counts["paused"] == 5 and mine.counts["waiting"] == 0  # BullMQ 5 semantics: held back = paused
    assert mine.counts["prioritized"] == theirs["prioritized"] == 1
    rest = {k: v for k, v in mine.counts.items() if k not in ("paused", "waiting")}
    assert rest == {k: v for k, v in theirs.items() if k not in ("paused", "waiting")}


def test_inspector_is_read_only_and_ignores_legacy_markers(redis_server, queue_name):
    from bullmq import Queue

    r = sync_redis(redis_server.url)
    wait = f"bull:{queue_name}:wait"

    async def add():
        q = Queue(queue_name, {"connection": redis_server.url})
        for i in range(3):
            await q.add("wait", {"i": i})
        await q.close()

    asyncio.run(add())
    r.rpush(wait, "0:0")  # a BullMQ 4 marker at the tail
    # a user that may only read: any write from the inspector would fail with NOPERM
    r.execute_command("ACL", "SETUSER", "ro-" + queue_name, "on", ">ro-pass", "~*", "&*", "-@all", "+@read",
                      "+@connection", "+multi", "+exec", "+discard", "+hello")
    ro_url = redis_server.url.replace("redis://", f"redis://ro-{queue_name}:ro-pass@")
    mine = stats(ro_url, queue_name)
    assert mine.counts["waiting"] == 3
    assert r.llen(wait) == 4 and r.lindex(wait, -1) == "0:0"  # untouched
    theirs = asyncio.run(_counts(redis_server.url, queue_name))
    assert theirs["waiting"] == mine.counts["waiting"]
    assert r.llen(wait) == 3  # BullMQ's own count script removed the marker; ours did not


async def _counts(url, name):
    from bullmq import Queue

    q = Queue(name, {"connection": url})
    try:
        return await q.getJobCounts(*JOB_COUNT_TYPES)
    finally:
        await q.close()


def test_nonexistent_queue_reports_zeros_and_says_so(redis_server, queue_name):
    s = stats(redis_server.url, queue_name)
    assert not s.exists
    assert set(s.counts.values()) == {0}
    assert any("does not exist" in n for n in s.notes)
    assert s.oldest_waiting_age_s is None and s.failure_rate is None


def test_delayed_past_due_and_oldest_waiting_age(redis_server, queue_name):
    from bullmq import Queue

    async def add():
        q = Queue(queue_name, {"connection": redis_server.url})
        await q.add("soon", {}, {"delay": 50})
        await q.add("later", {}, {"delay": 3_600_000})
        await q.add("now", {})
        await q.close()

    asyncio.run(add())
    r = sync_redis(redis_server.url)
    # make the waiting job look 10 minutes old
    r.hset(f"bull:{queue_name}:3", "timestamp", int(time.time() * 1000) - 600_000)
    deadline = time.monotonic() + 10
    while (s := stats(redis_server.url, queue_name)).delayed_past_due < 1:  # no worker promotes it
        assert time.monotonic() < deadline, "the delayed job never became due"
        time.sleep(0.05)
    assert s.delayed_past_due == 1 and s.counts["delayed"] == 2
    assert s.oldest_waiting_job == "3" and s.oldest_waiting_age_s >= 600


def test_redis_down_gives_one_line_error_quickly(queue_name):
    from tests.conftest import free_port

    url = f"redis://:s3cr3t-pass@127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailable) as ei:
        stats(url, queue_name, timeout=2)
    msg = ei.value.message
    assert "\n" not in msg and "Redis" in msg and "s3cr3t-pass" not in msg and "****" in msg
