"""The Node fixture app (tests/fixtures/nodeapp), our stand-in for the real AIXSSS monorepo, against real services.

Installed with `npm ci` from its committed lock file and built once per module in a temp copy; then its api and
worker run as subprocesses on a fresh database (migrations applied) and the session's Redis.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import REPO, free_port, poll

pytestmark = pytest.mark.slow

NODE = "/usr/bin/node"
FIXTURE = REPO / "tests" / "fixtures" / "nodeapp"
MIGRATIONS = Path("apps/api/prisma/migrations")
ENC_KEY = "k" * 40
JWT = "j" * 40


def _run(argv, cwd, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def nodeapp(tmp_path_factory) -> Path:
    """A copy of the fixture, installed (`npm ci`) and built (every workspace)."""
    npm = shutil.which("npm")
    if not npm or not os.path.exists(NODE):
        pytest.fail("node and npm are required (Node 20 at /usr/bin/node)")
    d = tmp_path_factory.mktemp("nodeapp") / "app"
    shutil.copytree(FIXTURE, d, ignore=shutil.ignore_patterns("node_modules", "dist", ".dist-tmp-*"))
    t0 = time.monotonic()
    p = _run([npm, "ci", "--no-audit", "--no-fund"], d)
    assert p.returncode == 0, f"npm ci failed: {p.stderr[-3000:]}"
    t1 = time.monotonic()
    p = _run([npm, "run", "build"], d, timeout=120)
    assert p.returncode == 0, f"npm run build failed: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    print(f"nodeapp: npm ci {t1 - t0:.1f}s, build {time.monotonic() - t1:.1f}s")
    return d


@pytest.fixture
def app_db(pg_server) -> str:
    """A fresh database with the fixture's migrations applied in lexical order; its Prisma-style URL."""
    name = pg_server.create_database()
    with psycopg.connect(pg_server.url(name, schema=None), autocommit=True) as conn:
        for mig in sorted(p for p in (FIXTURE / MIGRATIONS).iterdir() if p.is_dir()):
            conn.execute((mig / "migration.sql").read_text())
    return pg_server.url(name)


def plain_url(prisma_url: str) -> str:
    return prisma_url.split("?", 1)[0]


class Proc:
    """A fixture process with its stdout/stderr in files (no pipe to fill up)."""

    def __init__(self, argv, cwd: Path, env: dict, log_dir: Path, name: str):
        self.out_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._out = open(self.out_path, "wb")
        self.p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s; output:\n{self.output[-3000:]}") from None

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(10)
        self._out.close()


@pytest.fixture
def launch(nodeapp, tmp_path):
    """Starts the api or the worker of the built fixture: launch("api"|"worker", **env) -> Proc; all killed after."""
    procs: list[Proc] = []

    def start(which: str, **env) -> Proc:
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
                "NO_COLOR": "1", "NODE_ENV": "test"}
        cwd = nodeapp / "apps" / which
        entry = "dist/main.js" if which == "api" else "dist/worker.js"
        proc = Proc([NODE, entry], cwd, {**base, **{k: str(v) for k, v in env.items()}}, tmp_path, which)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


@pytest.fixture
def app_env(app_db, redis_server, queue_name) -> dict:
    return {"DATABASE_URL": app_db, "REDIS_URL": redis_server.url, "AI_QUEUE_NAME": queue_name,
            "API_KEY_ENCRYPTION_KEY": ENC_KEY, "JWT_SECRET": JWT}


def start_api(launch, env: dict, **extra) -> tuple[Proc, str]:
    port = free_port()
    proc = launch("api", PORT=port, APP_VERSION="1.2.3", APP_COLOR="green", **env, **extra)
    base = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.p.poll() is None, f"api exited {proc.p.returncode}:\n{proc.output}"
        try:
            return httpx.get(base + "/api/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    poll(healthy, timeout=10, interval=0.1, what="api health")
    return proc, base


def wait_ready(worker: Proc, queue: str, concurrency: int = 4) -> None:
    line = f"[worker] ready (queue={queue}, concurrency={concurrency})"

    def ready():
        assert worker.p.poll() is None, f"worker exited {worker.p.returncode}:\n{worker.output}"
        return line in worker.output

    poll(ready, timeout=15, interval=0.1, what="the worker's ready line")


def job_row(base: str, job_id: str) -> dict:
    r = httpx.get(f"{base}/api/ai-jobs/{job_id}", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def wait_status(base: str, job_id: str, statuses: tuple[str, ...], timeout: float = 15) -> dict:
    return poll(lambda: (row := job_row(base, job_id))["status"] in statuses and row, timeout=timeout,
                interval=0.1, what=f"job {job_id} to reach {statuses}")


def test_install_and_build_outputs(nodeapp):
    assert (nodeapp / "package-lock.json").is_file()
    bullmq = json.loads((nodeapp / "node_modules" / "bullmq" / "package.json").read_text())["version"]
    assert bullmq.startswith("5."), bullmq
    assert (nodeapp / "node_modules" / "pg").is_dir()
    for app, entry in (("api", "main.js"), ("worker", "worker.js")):
        built = (nodeapp / "apps" / app / "dist" / entry).read_text()
        assert built.startswith(f"// @aixsss-fixture/{app} 1.0.0: built ")
    web = nodeapp / "apps" / "web" / "dist"
    index = (web / "index.html").read_text()
    js = sorted((web / "assets").glob("index-*.js"))
    assert len(js) == 1 and f"/assets/{js[0].name}" in index
    assert '"apiBasePath":"/api"' in js[0].read_text() and '"dataMode":"api"' in js[0].read_text()
    assert (web / "favicon.svg").is_file()


def test_build_fails_on_request_and_keeps_the_previous_output(nodeapp):
    main = nodeapp / "apps" / "api" / "dist" / "main.js"
    before = main.read_text()
    p = _run([shutil.which("npm"), "run", "build", "-w", "apps/api"], nodeapp,
             env={**os.environ, "FIXTURE_BUILD_FAIL": "1"}, timeout=60)
    assert p.returncode == 1
    assert "[build] error: api: build failed on purpose: FIXTURE_BUILD_FAIL=1" in p.stderr
    assert main.read_text() == before
    # the other builds are not affected by the api switch
    p = _run([shutil.which("npm"), "run", "build", "-w", "apps/worker"], nodeapp,
             env={**os.environ, "FIXTURE_BUILD_FAIL": "1"}, timeout=60)
    assert p.returncode == 0, p.stderr


def test_api_and_worker_process_jobs(launch, app_env, redis_server, queue_name):
    api, base = start_api(launch, app_env)
    h = httpx.get(base + "/api/health").json()
    assert h["ok"] is True and abs(h["ts"] - time.time() * 1000) < 60_000
    assert httpx.get(base + "/api/version").json() == {"version": "1.2.3", "color": "green"}
    assert httpx.get(base + "/api/nope").status_code == 404
    worker = launch("worker", **app_env)
    wait_ready(worker, queue_name)

    r = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat", "input": {"prompt": "hi"}})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    row = wait_status(base, job_id, ("succeeded", "failed"))
    assert row["status"] == "succeeded", row
    assert row["result"]["type"] == "llm_chat" and row["result"]["input"] == {"prompt": "hi"}
    assert row["startedAt"] and row["finishedAt"] and row["error"] is None
    poll(lambda: f"job {job_id} llm_chat succeeded" in worker.output, timeout=5, what="the job's log line")

    # the BullMQ job: same id as the row, the api's options, completed
    import redis

    r5 = redis.Redis.from_url(redis_server.url, decode_responses=True)
    opts = json.loads(r5.hget(f"bull:{queue_name}:{job_id}", "opts"))
    assert opts["attempts"] == 2 and opts["backoff"] == {"type": "exponential", "delay": 1000}
    assert r5.zscore(f"bull:{queue_name}:completed", job_id) is not None

    # a profile's key, encrypted by the api, decrypted by the worker (the shared key)
    p = httpx.post(base + "/api/ai-profiles", json={"apiKey": "sk-test", "videoApiKey": "sk-video"})
    assert p.status_code == 201 and "apiKeyEncrypted" not in p.json() and p.json()["hasVideoApiKey"]
    r = httpx.post(base + "/api/ai-jobs", json={"type": "plan_episodes", "profileId": p.json()["id"]})
    row = wait_status(base, r.json()["id"], ("succeeded", "failed"))
    assert row["status"] == "succeeded" and row["aiProfileId"] == p.json()["id"], row
    # ...in the stored format aixsss-ops reads and rotates
    from aixsss_ops.crypto import decrypt, derive_key

    with psycopg.connect(plain_url(app_env["DATABASE_URL"])) as conn:
        stored = conn.execute('SELECT "apiKeyEncrypted", "imageApiKeyEncrypted", "videoApiKeyEncrypted" '
                              'FROM "AIProfile"').fetchone()
    assert decrypt(stored[0], derive_key(ENC_KEY)) == "sk-test"
    assert stored[1] is None and decrypt(stored[2], derive_key(ENC_KEY)) == "sk-video"

    # SIGTERM: the api exits at once, with no shutdown hooks
    t0 = time.monotonic()
    api.p.send_signal(signal.SIGTERM)
    assert api.wait(5) == -signal.SIGTERM and time.monotonic() - t0 < 2


def test_worker_sigterm_lets_the_job_in_flight_finish(launch, app_env, queue_name):
    _, base = start_api(launch, app_env)
    worker = launch("worker", **app_env, WORKER_CONCURRENCY=2)
    wait_ready(worker, queue_name, concurrency=2)
    job_id = httpx.post(base + "/api/ai-jobs", json={"type": "generate_scene_video", "input": {"ms": 2000}}).json()["id"]
    wait_status(base, job_id, ("running",), timeout=10)
    t0 = time.monotonic()
    worker.p.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert time.monotonic() - t0 > 0.5  # it did wait for the job
    assert "[worker] shutting down..." in worker.output
    assert f"job {job_id} generate_scene_video succeeded" in worker.output
    assert job_row(base, job_id)["status"] == "succeeded"


def test_api_crash_switch_exits_1(launch, app_env):
    api = launch("api", PORT=free_port(), FIXTURE_API_CRASH=1, **app_env)
    assert api.wait(10) == 1
    assert "crashing on purpose" in api.output


def test_bad_env_exits_1_naming_the_problem_not_the_value(launch, app_env):
    api = launch("api", PORT=free_port(), **{**app_env, "JWT_SECRET": "tooshort-secret"})
    assert api.wait(10) == 1
    assert "JWT_SECRET: must be at least 32 characters (got 15)" in api.output
    assert "tooshort-secret" not in api.output
    worker = launch("worker", **{**app_env, "REDIS_URL": "http://127.0.0.1:1"})
    assert worker.wait(10) == 1
    assert "[worker] bootstrap failed EnvError" in worker.output and "REDIS_URL: scheme must be" in worker.output


def test_worker_never_ready_switch(launch, app_env, queue_name):
    _, base = start_api(launch, app_env)
    worker = launch("worker", FIXTURE_WORKER_NEVER_READY=1, **app_env)
    job_id = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat"}).json()["id"]
    time.sleep(3)
    assert worker.p.poll() is None, worker.output
    assert "[worker] ready" not in worker.output
    assert job_row(base, job_id)["status"] == "queued"
    worker.p.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0


def test_health_is_liveness_only(launch):
    dead_pg, dead_redis = free_port(), free_port()
    api, base = start_api(launch, {
        "DATABASE_URL": f"postgresql://postgres:x@127.0.0.1:{dead_pg}/aixsss?schema=public",
        "REDIS_URL": f"redis://:secret@127.0.0.1:{dead_redis}", "API_KEY_ENCRYPTION_KEY": ENC_KEY, "JWT_SECRET": JWT,
    })
    assert httpx.get(base + "/api/health").json()["ok"] is True
    r = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat"}, timeout=15)
    assert r.status_code == 503
    body = r.json()
    assert body["statusCode"] == 503 and "database unreachable" in body["message"] and body["path"] == "/api/ai-jobs"


def test_redis_down_marks_the_job_failed_with_503(launch, app_env):
    dead_redis = free_port()
    _, base = start_api(launch, {**app_env, "REDIS_URL": f"redis://:secret@127.0.0.1:{dead_redis}/0"})
    t0 = time.monotonic()
    r = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat"}, timeout=15)
    assert r.status_code == 503 and "redis" in r.json()["message"], r.text
    assert time.monotonic() - t0 < 10
    with psycopg.connect(plain_url(app_env["DATABASE_URL"])) as conn:
        rows = conn.execute('SELECT "status", "error" FROM "AIJob"').fetchall()
    assert rows == [("failed", "could not be enqueued")]


def test_prisma_schema_parameter_sets_the_search_path(pg_server, launch, redis_server, queue_name):
    name = pg_server.create_database()
    with psycopg.connect(pg_server.url(name, schema=None), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA tenant")
        conn.execute("SET search_path TO tenant")
        for mig in sorted(p for p in (FIXTURE / MIGRATIONS).iterdir() if p.is_dir()):
            conn.execute((mig / "migration.sql").read_text())
    env = {"DATABASE_URL": pg_server.url(name, schema="tenant"), "REDIS_URL": redis_server.url,
           "AI_QUEUE_NAME": queue_name, "API_KEY_ENCRYPTION_KEY": ENC_KEY, "JWT_SECRET": JWT}
    _, base = start_api(launch, env)
    r = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat"})
    assert r.status_code == 201, r.text
    with psycopg.connect(pg_server.url(name, schema=None)) as conn:
        assert conn.execute('SELECT count(*) FROM tenant."AIJob"').fetchone()[0] == 1


def test_failures_retries_and_cancellation(launch, app_env, queue_name):
    _, base = start_api(launch, app_env)
    profile = httpx.post(base + "/api/ai-profiles", json={"apiKey": "sk-test"}).json()["id"]
    worker = launch("worker", **{**app_env, "API_KEY_ENCRYPTION_KEY": "another key of at least 32 characters"})
    wait_ready(worker, queue_name)
    # a failing job is tried twice (attempts 2, backoff 1 s), then stays failed
    failing = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat", "input": {"fail": "provider said no"}}).json()
    # a key encrypted with another API_KEY_ENCRYPTION_KEY: failed at once, no retry
    wrong_key = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat", "profileId": profile}).json()
    poll(lambda: f"job {failing['id']} llm_chat failed (attempt 2)" in worker.output, timeout=15,
         what="the second attempt")
    row = job_row(base, failing["id"])
    assert row["status"] == "failed" and row["error"] == "Error: provider said no"
    row = job_row(base, wrong_key["id"])
    assert row["status"] == "failed" and "cannot decrypt" in row["error"], row
    assert f"job {wrong_key['id']} llm_chat failed (attempt 2)" not in worker.output
    # cooperative cancellation of a running job
    long = httpx.post(base + "/api/ai-jobs", json={"type": "llm_chat", "input": {"ms": 10000}}).json()["id"]
    wait_status(base, long, ("running",))
    assert httpx.post(f"{base}/api/ai-jobs/{long}/cancel").json()["status"] == "cancelled"
    poll(lambda: f"job {long} llm_chat cancelled" in worker.output, timeout=5, what="the worker to stop the job")
    assert job_row(base, long)["status"] == "cancelled"
    assert httpx.post(f"{base}/api/ai-jobs/{long}/cancel").status_code == 409
