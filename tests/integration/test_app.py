"""The bundled api and worker as real processes against real Postgres, Redis and SeaweedFS (S3).

SeaweedFS comes from conftest's session fixture ``s3_server``: one instance serves every test file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psycopg
import pytest
from bullmq import Queue
from minio import Minio

from aixsss_ops import crypto
from aixsss_ops.dburl import parse_database_url
from tests.conftest import REPO, free_port, state_tmpdir, wait_port

APP = REPO / "app"
API_KEY = "sk-integration-test-provider-key"


def poll(check, *, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout}s")


def apply_migrations(database_url: str) -> None:
    """Every migration.sql in lexical folder order (stand-in for the real migrate command)."""
    with parse_database_url(database_url).connect() as conn:
        for sql in sorted((APP / "migrations").glob("*/migration.sql")):
            conn.execute(sql.read_text())


@pytest.fixture
def stack(database_url, redis_server, queue_name, s3_server):
    """The environment of one isolated deployment (fresh database, queue and bucket) and a process starter."""
    apply_migrations(database_url)
    env = {
        "PATH": os.environ["PATH"], "NODE_ENV": "test", "DATABASE_URL": database_url, "REDIS_URL": redis_server.url,
        "AI_QUEUE_NAME": queue_name, "API_KEY_ENCRYPTION_KEY": crypto.generate_key(), "JWT_SECRET": "j" * 40,
        "S3_ENDPOINT": s3_server.endpoint, "S3_ACCESS_KEY": s3_server.access_key, "S3_SECRET_KEY": s3_server.secret_key,
        "S3_BUCKET": f"b-{uuid.uuid4().hex[:12]}", "HOST": "127.0.0.1", "PORT": str(free_port()),
        "APP_VERSION": "1.2.3", "APP_COLOR": "green", "WORKER_CONCURRENCY": "2",
    }
    logs = state_tmpdir("aixsss-app-")
    procs: list[subprocess.Popen] = []

    def start(module: str, **overrides) -> subprocess.Popen:
        out = open(logs / f"{module}-{len(procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=APP, env={**env, **overrides},
                                stdout=out, stderr=subprocess.STDOUT)
        out.close()
        procs.append(proc)
        return proc

    yield env, start, logs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def api_client(env: dict, proc: subprocess.Popen) -> httpx.Client:
    wait_port(int(env["PORT"]), timeout=30)
    assert proc.poll() is None
    return httpx.Client(base_url=f"http://127.0.0.1:{env['PORT']}/api", timeout=10)


def db_row(database_url: str, query: str, *params):
    with parse_database_url(database_url).connect() as conn:
        conn.row_factory = psycopg.rows.dict_row
        return conn.execute(query, params).fetchone()


def wait_for_job(database_url: str, job_id: str, statuses: set[str]) -> dict:
    return poll(lambda: (row := db_row(database_url, 'SELECT * FROM "AIJob" WHERE "id" = %s', job_id))
                and row["status"] in statuses and row, timeout=60, what=f"AIJob {job_id} in {statuses}")


def s3_client(env: dict) -> Minio:
    return Minio(env["S3_ENDPOINT"].removeprefix("http://"), access_key=env["S3_ACCESS_KEY"],
                 secret_key=env["S3_SECRET_KEY"], secure=False)


def test_profile_job_artifact_and_graceful_stop(stack, database_url):
    env, start, _ = stack
    api, worker = start("api"), start("worker")
    with api_client(env, api) as http:
        health = http.get("/health").json()
        assert health["ok"] is True and (health["version"], health["color"]) == ("1.2.3", "green")
        assert isinstance(health["ts"], int)
        assert http.get("/ready").json() == {"ok": True, "checks": {"postgres": "ok", "redis": "ok"}}

        created = http.post("/ai-profiles", json={"name": "main", "provider": "deepseek", "model": "deepseek-chat",
                                                  "apiKey": API_KEY, "videoApiKey": "sk-video-key"})
        assert created.status_code == 201, created.text
        profile = created.json()
        assert API_KEY not in created.text
        assert (profile["hasApiKey"], profile["hasImageApiKey"], profile["hasVideoApiKey"]) == (True, False, True)
        assert [p["id"] for p in http.get("/ai-profiles").json()] == [profile["id"]]

        stored = db_row(database_url, 'SELECT * FROM "AIProfile" WHERE "id" = %s', profile["id"])
        key = crypto.derive_key(env["API_KEY_ENCRYPTION_KEY"])
        assert stored["apiKeyEncrypted"].count(".") == 2 and API_KEY not in stored["apiKeyEncrypted"]
        assert crypto.decrypt(stored["apiKeyEncrypted"], key) == API_KEY
        assert crypto.decrypt(stored["videoApiKeyEncrypted"], key) == "sk-video-key"
        assert stored["imageApiKeyEncrypted"] is None

        job_input = {"messages": [{"role": "user", "content": "hello"}]}
        enqueued = http.post("/ai-jobs", json={"type": "llm_chat", "profileId": profile["id"], "input": job_input})
        assert enqueued.status_code == 201, enqueued.text
        job_id = enqueued.json()["id"]
        assert enqueued.json()["status"] == "queued"

        done = wait_for_job(database_url, job_id, {"succeeded", "failed"})
        assert (done["status"], done["error"]) == ("succeeded", None)
        assert done["startedAt"] <= done["finishedAt"] and done["progress"] == {"percent": 100}
        public = http.get(f"/ai-jobs/{job_id}").json()
        assert public["status"] == "succeeded" and public["result"] == done["result"]
        assert done["result"]["output"].startswith("llm_chat:") and done["result"]["model"] == "deepseek-chat"

        artifact = s3_client(env).get_object(env["S3_BUCKET"], f"artifacts/{job_id}.json")
        assert json.loads(artifact.read()) == {"jobId": job_id, "type": "llm_chat", "result": done["result"]}

        uploaded = http.put("/assets/scenes/1/keyframe.png", content=b"\x89PNG-bytes",
                            headers={"content-type": "image/png"})
        assert uploaded.status_code == 201, uploaded.text
        fetched = http.get("/assets/scenes/1/keyframe.png")
        assert (fetched.content, fetched.headers["content-type"]) == (b"\x89PNG-bytes", "image/png")

        missing = http.get("/ai-jobs/does-not-exist")
        assert missing.status_code == 404
        assert missing.json().keys() == {"statusCode", "message", "error", "path", "timestamp"}
        assert (missing.json()["statusCode"], missing.json()["path"]) == (404, "/api/ai-jobs/does-not-exist")
        invalid = http.post("/ai-profiles", json={"name": "x", "provider": "nope", "apiKey": "sk-echo-me-not"})
        assert invalid.status_code == 400 and "sk-echo-me-not" not in invalid.text
        assert http.get("/assets/no/such/object").status_code == 404

    for proc in (api, worker):
        proc.send_signal(signal.SIGTERM)
    assert api.wait(15) == 0
    assert worker.wait(15) == 0


def test_worker_with_the_wrong_key_fails_the_job_clearly(stack, database_url):
    env, start, logs = stack
    api, worker = start("api"), start("worker", API_KEY_ENCRYPTION_KEY=crypto.generate_key())
    with api_client(env, api) as http:
        profile = http.post("/ai-profiles", json={"name": "p", "provider": "kimi", "apiKey": API_KEY}).json()
        job_id = http.post("/ai-jobs", json={"type": "plan_episodes", "profileId": profile["id"]}).json()["id"]
        failed = wait_for_job(database_url, job_id, {"failed", "succeeded"})
    expected = f"cannot decrypt AIProfile {profile['id']}.apiKeyEncrypted with the configured API_KEY_ENCRYPTION_KEY"
    assert (failed["status"], failed["error"]) == ("failed", expected)
    assert failed["finishedAt"] is not None and failed["result"] is None
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    output = "".join(p.read_text() for p in logs.glob("worker-*.log"))
    assert job_id in output and API_KEY not in output


def test_ready_reports_an_unreachable_redis(stack):
    env, start, _ = stack
    api = start("api", REDIS_URL=f"redis://127.0.0.1:{free_port()}")
    with api_client(env, api) as http:
        ready = http.get("/ready")
        assert http.get("/health").status_code == 200
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "unreachable"}


@pytest.mark.parametrize("module", ["api", "worker"])
def test_invalid_env_is_one_line_and_exit_1(module):
    secret = "too-short-secret-value"
    done = subprocess.run([sys.executable, "-m", module], cwd=APP, capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], "API_KEY_ENCRYPTION_KEY": secret, "REDIS_URL": "http://x"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "API_KEY_ENCRYPTION_KEY" in lines[0] and "REDIS_URL" in lines[0] and "DATABASE_URL" in lines[0]
    assert secret not in done.stderr


def test_a_cancelled_row_is_skipped(stack, database_url):
    env, start, logs = stack
    api = start("api")
    start("worker")
    with api_client(env, api) as http:
        profile = http.post("/ai-profiles", json={"name": "p", "provider": "gemini", "apiKey": API_KEY}).json()
    job_id = "ccancelled0000000000000001"
    with parse_database_url(database_url).connect() as conn:
        conn.execute('''INSERT INTO "AIJob" ("id", "teamId", "aiProfileId", "type", "status")
                        VALUES (%s, %s, %s, 'llm_chat', 'cancelled')''', (job_id, profile["teamId"], profile["id"]))
    asyncio.run(enqueue_directly(env, job_id))
    poll(lambda: f"job {job_id} llm_chat skipped: cancelled" in "".join(p.read_text() for p in logs.glob("worker-*.log")),
         timeout=30, what="the worker skipping the cancelled job")
    row = db_row(database_url, 'SELECT "status", "startedAt", "result" FROM "AIJob" WHERE "id" = %s', job_id)
    assert (row["status"], row["startedAt"], row["result"]) == ("cancelled", None, None)


async def enqueue_directly(env: dict, job_id: str) -> None:
    queue = Queue(env["AI_QUEUE_NAME"], {"connection": env["REDIS_URL"]})
    try:
        await queue.add("llm_chat", {}, {"jobId": job_id})
    finally:
        await queue.close()
