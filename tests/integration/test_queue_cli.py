"""`aixsss-ops queue …` as users run it (subprocess): JSON output, exit codes, confirmations, workers."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.cli import run_cli
from tests.conftest import free_port
from tests.integration.queue_helpers import Holder, apoll, sync_redis


def q(redis_server, queue_name, *args):
    return run_cli(*args, "--redis-url", redis_server.url, "--queue", queue_name, timeout=60)


async def _true(v):
    return v


def _add(url, queue, n, name="job", opts=None):
    from bullmq import Queue

    async def go():
        qq = Queue(queue, {"connection": url})
        for i in range(n):
            await qq.add(name, {"i": i}, opts or {})
        await qq.close()

    asyncio.run(go())


def test_stats_json_is_one_document(redis_server, queue_name):
    _add(redis_server.url, queue_name, 3)
    res = q(redis_server, queue_name, "queue", "stats", "--json")
    assert res.code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["counts"]["waiting"] == 3 and doc["queue"] == queue_name and doc["exists"]
    res = run_cli("--json", "queue", "stats", "--redis-url", redis_server.url, "--queue", queue_name)
    assert res.code == 0 and json.loads(res.stdout)["counts"]["waiting"] == 3


def test_stats_human_and_prometheus(redis_server, queue_name):
    _add(redis_server.url, queue_name, 2)
    res = q(redis_server, queue_name, "queue", "stats")
    assert res.code == 0 and "waiting" in res.stdout and "oldest waiting" in res.stdout
    res = q(redis_server, queue_name, "queue", "stats", "--format", "prometheus")
    assert res.code == 0
    assert f'aixsss_queue_jobs{{queue="{queue_name}",state="waiting"}} 2' in res.stdout.splitlines()
    res = q(redis_server, queue_name, "queue", "stats", "--format", "prometheus", "--watch", "2")
    assert res.code == 2


def test_stats_of_a_queue_that_does_not_exist(redis_server, queue_name):
    res = q(redis_server, queue_name, "queue", "stats")
    assert res.code == 0 and "does not exist" in res.output
    doc = q(redis_server, queue_name, "queue", "stats", "--json").json
    assert doc["exists"] is False and set(doc["counts"].values()) == {0}


def test_queue_env_and_precedence(redis_server, queue_name):
    _add(redis_server.url, queue_name, 1)
    res = run_cli("queue", "stats", "--json", env={"REDIS_URL": redis_server.url, "AI_QUEUE_NAME": queue_name})
    assert res.code == 0, res.output
    assert res.json["queue"] == queue_name and res.json["counts"]["waiting"] == 1


def test_redis_down_one_line_error_exit_1(queue_name):
    url = f"redis://:pw-should-hide@127.0.0.1:{free_port()}"
    res = run_cli("queue", "stats", "--redis-url", url, "--queue", queue_name, timeout=20)
    assert res.code == 1
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Redis" in errors[0] and "pw-should-hide" not in res.output
    res = run_cli("--json", "queue", "stats", "--redis-url", url, "--queue", queue_name, timeout=20)
    assert res.code == 1 and res.json["ok"] is False


def test_workers_check_exit_3_without_workers_and_lists_them(redis_server, queue_name):
    from bullmq import Worker

    res = q(redis_server, queue_name, "queue", "workers", "--check")
    assert res.code == 3 and "no worker" in res.stderr and "hint" in res.stderr
    res = q(redis_server, queue_name, "queue", "workers", "--json")
    assert res.code == 0 and res.json["count"] == 0 and res.json["finding"]["status"] == "warn"

    async def scenario():
        w1 = Worker(queue_name, Holder(), {"connection": redis_server.url, "name": "gpu-1", "drainDelay": 1})
        w2 = Worker(queue_name, Holder(), {"connection": redis_server.url, "drainDelay": 1})
        r = sync_redis(redis_server.url)

        def names():
            return [c.get("name") for c in r.client_list()]

        await apoll(lambda: _true(f"bull:{queue_name}:w:gpu-1" in names() and f"bull:{queue_name}" in names()),
                    what="workers to connect")
        res = await asyncio.to_thread(q, redis_server, queue_name, "queue", "workers", "--check", "--json")
        await w1.close()
        await w2.close()
        return res

    res = asyncio.run(scenario())
    assert res.code == 0, res.output
    named = {w["name"] for w in res.json["workers"]}
    assert named == {"gpu-1", None} and all(w["addr"] and w["idle_s"] >= 0 for w in res.json["workers"])


def test_pause_resume_drain_wait_cli(redis_server, queue_name):
    res = q(redis_server, queue_name, "queue", "pause", "--json")
    assert res.code == 0 and res.json["paused"] is True and res.json["changed"] is True
    assert sync_redis(redis_server.url).hget(f"bull:{queue_name}:meta", "paused") == "1"
    res = q(redis_server, queue_name, "queue", "drain-wait", "--timeout", "1", "--json")
    assert res.code == 0 and res.json["drained"] is True
    sync_redis(redis_server.url).lpush(f"bull:{queue_name}:active", "999")  # a job some worker holds
    res = q(redis_server, queue_name, "queue", "drain-wait", "--timeout", "0.3", "--json")
    assert res.code == 1 and res.json["drained"] is False and res.json["active"] == 1
    res = q(redis_server, queue_name, "queue", "resume", "--json")
    assert res.code == 0 and res.json["paused"] is False
    assert not sync_redis(redis_server.url).hexists(f"bull:{queue_name}:meta", "paused")


def _failed(url, queue, n):
    from bullmq import Queue, Worker

    async def go():
        qq = Queue(queue, {"connection": url})
        for i in range(n):
            await qq.add("llm_chat", {"i": i})

        async def boom(job, token):
            raise RuntimeError("x" * 500)

        w = Worker(queue, boom, {"connection": url, "drainDelay": 1})
        r = sync_redis(url)
        await apoll(lambda: _true(r.zcard(f"bull:{queue}:failed") == n), what="failed jobs")
        await w.close()
        await qq.close()

    asyncio.run(go())


def test_failed_retry_and_clean_cli_confirm_and_dry_run(redis_server, queue_name):
    url = redis_server.url
    _failed(url, queue_name, 3)
    r = sync_redis(url)
    res = q(redis_server, queue_name, "queue", "failed", "--limit", "2", "--json")
    assert res.code == 0 and res.json["count"] == 2
    assert len(res.json["jobs"][0]["failed_reason"]) <= 200 and res.json["jobs"][0]["name"] == "llm_chat"
    # destructive without --yes and without a terminal: refuse (exit 2), change nothing
    res = q(redis_server, queue_name, "queue", "retry-failed")
    assert res.code == 2 and r.zcard(f"bull:{queue_name}:failed") == 3
    res = q(redis_server, queue_name, "queue", "retry-failed", "--dry-run", "--json")
    assert res.code == 0 and res.json["planned"] == 3 and r.zcard(f"bull:{queue_name}:failed") == 3
    res = run_cli("--yes", "queue", "retry-failed", "--limit", "1", "--json", "--redis-url", url, "--queue", queue_name)
    assert res.code == 0 and res.json["retried"] == 1 and r.zcard(f"bull:{queue_name}:failed") == 2
    assert r.llen(f"bull:{queue_name}:wait") == 1
    res = q(redis_server, queue_name, "queue", "clean", "--state", "failed", "--older-than", "0s")
    assert res.code == 2 and r.zcard(f"bull:{queue_name}:failed") == 2
    res = q(redis_server, queue_name, "queue", "clean", "--state", "failed", "--older-than", "1h", "--json")
    assert res.code == 0 and res.json["planned"] == 0 and r.zcard(f"bull:{queue_name}:failed") == 2
    res = run_cli("-y", "queue", "clean", "--state", "failed", "--older-than", "0s", "--json",
                  "--redis-url", url, "--queue", queue_name)
    assert res.code == 0 and res.json["removed"] == 2 and r.zcard(f"bull:{queue_name}:failed") == 0
    res = q(redis_server, queue_name, "queue", "clean", "--state", "waiting", "--older-than", "1h")
    assert res.code == 2
    res = q(redis_server, queue_name, "queue", "clean", "--state", "failed", "--older-than", "soon")
    assert res.code == 2


@pytest.mark.timeout(60)
def test_stats_watch_refreshes_until_interrupted(redis_server, queue_name):
    import os
    import re
    import signal
    import subprocess

    from tests.cli import EXE

    # Ctrl-C as a terminal delivers it: SIGINT at its default disposition in the child, whatever this process has
    # (a run started in the background by a non-interactive shell ignores SIGINT, and a child inherits that)
    p = subprocess.Popen([EXE, "queue", "stats", "--redis-url", redis_server.url, "--queue", queue_name, "--watch", "0.2"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        seen = 0
        for line in p.stdout:
            if line.startswith(f"queue {queue_name} at"):
                seen += 1
                if seen == 1:
                    _add(redis_server.url, queue_name, 2)
            if re.search(r"\bwaiting\b\W+2\b", line):
                break  # a later snapshot shows the jobs added after the first
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=30)  # keep draining stdout: a full pipe would block the final flush
        assert p.returncode == 0 and seen >= 2
    finally:
        if p.poll() is None:
            p.kill()
