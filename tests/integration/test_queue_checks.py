"""The queue checks doctor runs, against a real Redis."""

from __future__ import annotations

from aixsss_ops.queue.checks import queue_findings
from tests.integration.queue_helpers import sync_redis


def test_queue_findings_on_real_redis(redis_server, queue_name):
    r = sync_redis(redis_server.url)
    r.lpush(f"bull:{queue_name}:wait", "1", "2")
    r.hset(f"bull:{queue_name}:1", mapping={"name": "llm_chat", "timestamp": 0})
    envs = {"api": {"AI_QUEUE_NAME": queue_name}, "worker": {"AI_QUEUE_NAME": "other"}}
    by = {f.check: f for f in queue_findings(redis_server.url, queue_name, envs)}
    assert by["redis.maxmemory-policy"].status == "ok"  # the fixture runs noeviction
    assert by["redis.persistence"].status == "ok"  # and AOF
    assert by["queue.name-match"].status == "fail"
    assert by["queue.workers"].status == "fail" and "2 job(s) waiting" in by["queue.workers"].message
    assert by["queue.oldest-waiting"].status == "warn"  # job 1 was created in 1970
    assert by["queue.failed-rising"].status == "ok"
    old = r.config_get("maxmemory-policy")["maxmemory-policy"]
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        by = {f.check: f for f in queue_findings(redis_server.url, queue_name)}
        assert by["redis.maxmemory-policy"].status == "fail" and "queue.name-match" not in by
    finally:
        r.config_set("maxmemory-policy", old)
