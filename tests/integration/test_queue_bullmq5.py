"""Agreement with Node BullMQ 5 (what the real AIXSSS runs): its layout, its getJobCounts, its workers.

bullmq@5 is installed from the npm registry into a session temp dir; if npm cannot install it
the tests fail (they are never skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aixsss_ops.queue.control import pause, resume, retry_failed
from aixsss_ops.queue.inspect import stats
from aixsss_ops.queue.workers import workers
from tests.integration.queue_helpers import poll, sync_redis

NODE = "/usr/bin/node"
DRIVER = Path(__file__).with_name("bullmq5_driver.js")


@pytest.fixture(scope="session")
def bullmq5_modules(tmp_path_factory) -> Path:
    npm = shutil.which("npm")
    if not npm or not os.path.exists(NODE):
        pytest.fail("node and npm are required for the BullMQ 5 tests (Node 20 at /usr/bin/node)")
    d = tmp_path_factory.mktemp("bullmq5")
    (d / "package.json").write_text(json.dumps({"name": "bullmq5-tests", "private": True}))
    p = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "bullmq@5"],
                       cwd=d, capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not (d / "node_modules" / "bullmq").is_dir():
        pytest.fail(f"npm install bullmq@5 failed: {p.stderr[-2000:]}")
    version = json.loads((d / "node_modules" / "bullmq" / "package.json").read_text())["version"]
    assert version.startswith("5."), version
    return d / "node_modules"


class Node5:
    """One Node process running BullMQ 5 on a queue, driven line by line."""

    def __init__(self, modules: Path, url: str, queue: str):
        env = {**os.environ, "NODE_PATH": str(modules)}
        self.p = subprocess.Popen([NODE, str(DRIVER), url, queue], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        assert self._read() == "ready"

    def _read(self):
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError(f"the node driver died: {self.p.stderr.read()[-2000:]}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(reply["error"])
        return reply["result"]

    def __call__(self, op: str, **kw):
        self.p.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self):
        try:
            if self.p.poll() is None:
                self("quit")
            self.p.wait(20)
        except Exception:
            self.p.kill()
            self.p.wait(5)


@pytest.fixture
def node5(bullmq5_modules, redis_server, queue_name):
    drivers = []

    def make(queue: str = queue_name) -> Node5:
        d = Node5(bullmq5_modules, redis_server.url, queue)
        drivers.append(d)
        return d

    yield make
    for d in drivers:
        d.close()


def test_counts_equal_bullmq5_getjobcounts_in_every_state(node5, redis_server, queue_name):
    n = node5()
    n("populate")
    mine = stats(redis_server.url, queue_name)
    theirs = n("counts")  # after ours: BullMQ's count script may write
    assert mine.counts == theirs
    assert all(v > 0 for k, v in theirs.items() if k != "paused"), theirs
    assert mine.layout == "5.x" and mine.meta_version.startswith("bullmq:5.")
    # and a BullMQ 5 pause: 'wait' renamed to 'paused', new jobs go to 'paused'
    n("pause")
    n("add", name="while-paused")
    r = sync_redis(redis_server.url)
    assert r.exists(f"bull:{queue_name}:paused") and not r.exists(f"bull:{queue_name}:wait")
    mine = stats(redis_server.url, queue_name)
    theirs = n("counts")
    assert mine.counts == theirs and theirs["paused"] == 5 and theirs["waiting"] == 0
    assert mine.paused


def test_our_pause_stops_a_node_worker_and_node_resume_loses_nothing(node5, redis_server, queue_name):
    url = redis_server.url
    n = node5()
    n("worker", name="w5")
    n("add", name="ok")
    poll(lambda: n("processed") == 1, what="the node worker to process")
    ws = workers(url, queue_name)
    assert ws and all((w.flavor, w.name) == ("node", "w5") for w in ws)
    pause(url, queue_name)
    for _ in range(3):
        n("add", name="ok")
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        assert n("processed") == 1, "a node worker processed a job of a paused queue"
        time.sleep(0.05)
    mine = stats(url, queue_name)
    assert mine.counts == n("counts") and mine.counts["paused"] == 3
    # resumed by BullMQ 5 itself (e.g. from a dashboard): its RENAME must not lose a job
    n("resume")
    poll(lambda: n("processed") == 4, what="the node worker to resume")
    # and paused/resumed by us
    pause(url, queue_name)
    n("add", name="ok")
    time.sleep(0.5)
    assert n("processed") == 4
    resume(url, queue_name)
    poll(lambda: n("processed") == 5, what="the node worker to resume after our resume")
    assert stats(url, queue_name).counts == n("counts")


def test_retry_failed_on_a_paused_bullmq5_queue_matches_node(node5, redis_server, queue_name):
    url = redis_server.url
    a, b = node5(f"{queue_name}-a"), node5(f"{queue_name}-b")
    for d in (a, b):
        d("worker", name="w")
        for _ in range(3):
            d("add", name="fail", opts={"attempts": 2})
    poll(lambda: a("counts")["failed"] == 3 and b("counts")["failed"] == 3, what="failed jobs")
    a("pause")
    b("pause")
    a("retry")  # BullMQ 5's own retryJobs
    res = retry_failed(url, f"{queue_name}-b")
    assert res.retried == 3 and res.target == "paused"
    ca, cb = a("counts"), b("counts")
    assert ca == cb and cb["paused"] == 3 and cb["failed"] == 0
    assert stats(url, f"{queue_name}-b").counts == cb
