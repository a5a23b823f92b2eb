"""Queue controls against a real Redis and real bullmq workers: pause/resume, drain-wait, retry-failed, clean."""

from __future__ import annotations

import asyncio
import time

import pytest

from aixsss_ops.queue.control import clean, drain_wait, failed_jobs, pause, resume, retry_failed
from aixsss_ops.queue.inspect import stats
from tests.integration.queue_helpers import Holder, apoll, sync_redis


async def _true(v):
    return v


@pytest.mark.parametrize("meta_version", [None, "bullmq:5.81.5", "bullmq:6.0.0"])
def test_pause_stops_a_running_worker_and_resume_restarts_it(redis_server, queue_name, meta_version):
    from bullmq import Queue, Worker

    url = redis_server.url
    r = sync_redis(url)
    if meta_version:  # what a Node producer of that version writes into meta
        r.hset(f"bull:{queue_name}:meta", "version", meta_version)

    async def scenario():
        q = Queue(queue_name, {"connection": url})
        holder = Holder()
        w = Worker(queue_name, holder, {"connection": url, "drainDelay": 1})
        try:
            await q.add("ok", {})
            await apoll(lambda: _true(len(holder.done) == 1), what="the worker to run")
            res = await asyncio.to_thread(pause, url, queue_name)
            assert res.changed and res.paused
            for i in range(3):
                await q.add("ok", {"i": i})
            # the running worker must not take them: watch for a while
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                assert len(holder.done) == 1, "a paused queue's job was processed"
                await asyncio.sleep(0.05)
            st = await asyncio.to_thread(stats, url, queue_name)
            assert st.paused and st.counts["paused"] == 3 and st.counts["waiting"] == 0
            again = await asyncio.to_thread(pause, url, queue_name)
            assert not again.changed
            res = await asyncio.to_thread(resume, url, queue_name)
            assert res.changed and not res.paused
            await apoll(lambda: _true(len(holder.done) == 4), what="the worker to resume")
            st = await asyncio.to_thread(stats, url, queue_name)
            assert not st.paused and st.counts["paused"] == 0 and st.counts["waiting"] == 0
        finally:
            await w.close()
            await q.close()

    asyncio.run(scenario())
    if meta_version == "bullmq:6.0.0":
        assert not r.exists(f"bull:{queue_name}:paused")


def test_5x_pause_renames_wait_and_resume_restores_it(redis_server, queue_name):
    from bullmq import Queue

    url = redis_server.url
    r = sync_redis(url)

    async def add():
        q = Queue(queue_name, {"connection": url})
        for i in range(4):
            await q.add("ok", {"i": i})
        await q.close()

    asyncio.run(add())
    r.hset(f"bull:{queue_name}:meta", "version", "bullmq:5.81.5")
    before = r.lrange(f"bull:{queue_name}:wait", 0, -1)
    pause(url, queue_name)
    assert not r.exists(f"bull:{queue_name}:wait")
    assert r.lrange(f"bull:{queue_name}:paused", 0, -1) == before
    assert r.hget(f"bull:{queue_name}:meta", "paused") == "1"
    s = stats(url, queue_name)
    assert s.layout == "5.x" and s.counts["paused"] == 4 and s.counts["waiting"] == 0
    resume(url, queue_name)
    assert r.lrange(f"bull:{queue_name}:wait", 0, -1) == before
    assert not r.exists(f"bull:{queue_name}:paused") and not r.hexists(f"bull:{queue_name}:meta", "paused")


def test_drain_wait_waits_for_active_jobs(redis_server, queue_name):
    from bullmq import Queue, Worker

    url = redis_server.url

    async def scenario():
        q = Queue(queue_name, {"connection": url})
        holder = Holder()
        w = Worker(queue_name, holder, {"connection": url, "drainDelay": 1})
        try:
            await q.add("hold", {})
            r = sync_redis(url)
            await apoll(lambda: _true(r.llen(f"bull:{queue_name}:active") == 1), what="an active job")
            await asyncio.to_thread(pause, url, queue_name)
            res = await asyncio.to_thread(drain_wait, url, queue_name, 0.3)
            assert not res.drained and res.active == 1
            waiter = asyncio.create_task(asyncio.to_thread(drain_wait, url, queue_name, 30))
            await asyncio.sleep(0.3)
            assert not waiter.done()
            holder.release.set()
            res = await waiter
            assert res.drained and res.active == 0 and res.paused
        finally:
            holder.release.set()
            await w.close()
            await q.close()

    asyncio.run(scenario())


async def _make_failed(url: str, queue: str, names: list[str]) -> None:
    """Jobs that fail with attempts exhausted (2 attempts), in the order given."""
    from bullmq import Queue, Worker

    q = Queue(queue, {"connection": url})

    async def proc(job, token):
        raise RuntimeError(f"boom {job.name}")

    for n in names:
        await q.add(n, {"n": n}, {"attempts": 2})
    w = Worker(queue, proc, {"connection": url, "drainDelay": 1})
    r = sync_redis(url)
    await apoll(lambda: _true(r.zcard(f"bull:{queue}:failed") == len(names)), what="failed jobs")
    await w.close()
    await q.close()


STABLE_FIELDS = ("name", "data", "opts", "atm", "ats", "failedReason", "finishedOn", "processedOn", "returnvalue")


def _snapshot(r, queue: str) -> dict:
    ids = sorted(r.zrange(f"bull:{queue}:failed", 0, -1) + r.lrange(f"bull:{queue}:wait", 0, -1), key=int)
    return {
        "wait": r.lrange(f"bull:{queue}:wait", 0, -1),
        "failed": r.zrange(f"bull:{queue}:failed", 0, -1),
        "jobs": {j: dict(zip(STABLE_FIELDS, r.hmget(f"bull:{queue}:{j}", *STABLE_FIELDS), strict=True)) for j in ids},
        "waiting_events": sum(1 for _id, e in r.xrange(f"bull:{queue}:events")
                              if e.get("event") == "waiting" and e.get("prev") == "failed"),
        "marker": r.zrange(f"bull:{queue}:marker", 0, -1),
    }


def test_retry_failed_matches_bullmq_retryjobs(redis_server, queue_name):
    from bullmq import Queue

    url = redis_server.url
    theirs_q, mine_q = f"{queue_name}-a", f"{queue_name}-b"
    names = ["llm_chat", "plan_episodes", "llm_chat", "generate_scene_list"]
    asyncio.run(_make_failed(url, theirs_q, names))
    asyncio.run(_make_failed(url, mine_q, names))
    r = sync_redis(url)

    async def bullmq_retry():
        q = Queue(theirs_q, {"connection": url})
        await q.retryJobs({"state": "failed"})
        await q.close()

    plan = retry_failed(url, mine_q, dry_run=True)
    assert plan.planned == 4 and r.zcard(f"bull:{mine_q}:failed") == 4  # dry run changes nothing
    asyncio.run(bullmq_retry())
    res = retry_failed(url, mine_q)
    assert res.retried == 4 and res.target == "wait"
    a, b = _snapshot(r, theirs_q), _snapshot(r, mine_q)
    assert a == b
    assert a["failed"] == [] and len(a["wait"]) == 4 and a["waiting_events"] == 4
    assert all(j["failedReason"] is None and j["finishedOn"] is None for j in b["jobs"].values())


def test_retry_failed_by_name_and_limit(redis_server, queue_name):
    url = redis_server.url
    asyncio.run(_make_failed(url, queue_name, ["llm_chat", "plan_episodes", "llm_chat", "llm_chat"]))
    r = sync_redis(url)
    res = retry_failed(url, queue_name, names=["llm_chat"], limit=2)
    assert res.retried == 2
    waiting = r.lrange(f"bull:{queue_name}:wait", 0, -1)
    assert len(waiting) == 2 and all(r.hget(f"bull:{queue_name}:{j}", "name") == "llm_chat" for j in waiting)
    left = {r.hget(f"bull:{queue_name}:{j}", "name") for j in r.zrange(f"bull:{queue_name}:failed", 0, -1)}
    assert left == {"llm_chat", "plan_episodes"} and r.zcard(f"bull:{queue_name}:failed") == 2
    res = retry_failed(url, queue_name, limit=1)
    assert res.retried == 1 and r.zcard(f"bull:{queue_name}:failed") == 1


def test_retry_failed_into_paused_list_on_paused_5x_queue(redis_server, queue_name):
    url = redis_server.url
    asyncio.run(_make_failed(url, queue_name, ["a", "b"]))
    r = sync_redis(url)
    r.hset(f"bull:{queue_name}:meta", "version", "bullmq:5.81.5")
    pause(url, queue_name)
    res = retry_failed(url, queue_name)
    assert res.target == "paused" and res.retried == 2
    assert r.llen(f"bull:{queue_name}:paused") == 2 and not r.exists(f"bull:{queue_name}:wait")
    assert stats(url, queue_name).counts["paused"] == 2


def test_failed_jobs_lists_recent_failures(redis_server, queue_name):
    url = redis_server.url
    asyncio.run(_make_failed(url, queue_name, ["llm_chat", "plan_episodes"]))
    jobs = failed_jobs(url, queue_name, limit=5)
    assert [j.name for j in jobs] == ["plan_episodes", "llm_chat"]  # most recent first
    assert jobs[0].attempts_made == 2 and jobs[0].attempts == 2
    assert jobs[0].failed_reason == "boom plan_episodes" and jobs[0].finished_at


def test_clean_removes_only_what_it_says(redis_server, queue_name):
    from bullmq import Queue, Worker

    url = redis_server.url
    r = sync_redis(url)

    async def scenario():
        q = Queue(queue_name, {"connection": url})
        for i in range(6):
            await q.add("ok", {"i": i}, {"removeOnComplete": False})
        w = Worker(queue_name, Holder(), {"connection": url, "drainDelay": 1})
        await apoll(lambda: _true(r.zcard(f"bull:{queue_name}:completed") == 6), what="completed jobs")
        await w.close()
        await q.close()

    asyncio.run(scenario())
    asyncio.run(_make_failed(url, queue_name, ["f1"]))
    old = int(time.time() * 1000) - 2 * 86_400_000
    old_ids = r.zrange(f"bull:{queue_name}:completed", 0, 2)
    for j in old_ids:  # finished two days ago
        r.zadd(f"bull:{queue_name}:completed", {j: old}, xx=True)
        r.hset(f"bull:{queue_name}:{j}", "finishedOn", old)
    young_ids = set(r.zrange(f"bull:{queue_name}:completed", 0, -1)) - set(old_ids)

    plan = clean(url, queue_name, "completed", 86_400, dry_run=True)
    assert plan.planned == 3 and sorted(plan.job_ids) == sorted(old_ids)
    assert r.zcard(f"bull:{queue_name}:completed") == 6
    res = clean(url, queue_name, "completed", 86_400)
    assert res.removed == 3 and sorted(res.job_ids) == sorted(old_ids)
    assert set(r.zrange(f"bull:{queue_name}:completed", 0, -1)) == young_ids
    assert not any(r.exists(f"bull:{queue_name}:{j}") for j in old_ids)
    assert all(r.exists(f"bull:{queue_name}:{j}") for j in young_ids)
    assert r.zcard(f"bull:{queue_name}:failed") == 1  # another state: untouched
    assert clean(url, queue_name, "failed", 86_400).removed == 0
    assert clean(url, queue_name, "failed", 0).removed == 1


@pytest.mark.parametrize("meta_version, jobs, moved, layout", [
    (None, 0, False, "unknown"),  # nothing tells the layouts apart and 'wait' is empty: nothing is renamed
    (None, 3, True, "5.x"),  # BullMQ 5's pause renames 'wait': from then on a 'paused' list tells
    ("bullmq:5.81.5", 0, False, "5.x"),
    ("bullmq:6.0.0", 3, False, "6.x"),  # 6.x: the jobs stay in 'wait'
])
def test_pause_reports_what_it_did_and_the_layout_stats_reports(redis_server, queue_name, meta_version, jobs, moved,
                                                                 layout):
    from bullmq import Queue

    url = redis_server.url
    r = sync_redis(url)

    async def add(n):
        q = Queue(queue_name, {"connection": url})
        for i in range(n):
            await q.add("ok", {"i": i})
        await q.close()

    asyncio.run(add(jobs))
    if meta_version:
        r.hset(f"bull:{queue_name}:meta", "version", meta_version)
    res = pause(url, queue_name)
    assert res.changed and res.paused
    assert ("renamed to 'paused'" in res.message) is moved, res.message
    assert r.exists(f"bull:{queue_name}:paused") == int(moved)
    if not moved:
        assert "renamed" not in res.message and (f"{jobs} job(s) stay in 'wait'" in res.message or jobs == 0)
    s = stats(url, queue_name)
    assert res.layout == s.layout == layout and res.layout_evidence == s.layout_evidence, (res, s.layout)
    assert f"layout {s.layout} ({s.layout_evidence})" in res.message
    # jobs added while paused, by a producer that keeps them in 'wait': stats and a second pause agree
    asyncio.run(add(2))
    s = stats(url, queue_name)
    again = pause(url, queue_name)
    assert not again.changed and again.layout == s.layout and s.counts["paused"] == jobs + 2
