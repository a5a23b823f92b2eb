"""`keys rotate` on a whole embedded stack: jobs queued, a worker running, the api serving through the proxy.

No job may fail for a decryption error, the proxy must answer every request during the rotation, and every
profile — including those the old api created while the rotation ran — must end up decryptable with the new key.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from aixsss_ops import crypto, envfile
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 8.0, "lock_timeout": 60.0, "backup": False}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-keys-stack-")
    cfg = stack_config(root, deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    stack = open_stack(load_config(cfg))
    yield {"cfg": cfg, "stack": stack, "url": stack.url}
    run_cli("stack", "down", config=cfg, timeout=180)


class Load(threading.Thread):
    """Through the proxy, without pause: health checks, new profiles (their plaintext kept) and new jobs."""

    def __init__(self, url: str, profiles: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.profiles, self.stop = url, profiles, threading.Event()
        self.errors: list[str] = []
        self.requests = 0
        self.jobs: list[str] = []
        self.rng = random.Random(7)

    def run(self):
        with httpx.Client(base_url=self.url + "/api", timeout=10) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = c.get("/health")
                    self.requests += 1
                    if r.status_code != 200:
                        self.errors.append(f"health {r.status_code}")
                    if i % 3 == 0:
                        secret = f"sk-during-rotation-{i}-{self.rng.getrandbits(48):x}"
                        r = c.post("/ai-profiles", json={"name": f"live{i}", "provider": "kimi", "apiKey": secret})
                        self.requests += 1
                        if r.status_code != 201:
                            self.errors.append(f"profile {r.status_code}")
                        else:
                            self.profiles[r.json()["id"]] = secret
                    if i % 2 == 0:
                        pid = self.rng.choice(list(self.profiles))
                        r = c.post("/ai-jobs", json={"type": "llm_chat", "profileId": pid, "input": {"i": i}})
                        self.requests += 1
                        if r.status_code >= 300:
                            self.errors.append(f"job {r.status_code}")
                        else:
                            self.jobs.append(r.json()["id"])
                except httpx.HTTPError as e:
                    self.errors.append(repr(e))
                time.sleep(0.01)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(30)


def test_rotation_with_jobs_queued_and_a_worker_running(env):
    cfg, stack, url = env["cfg"], env["stack"], env["url"]
    old_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    db = parse_database_url(stack.app_database_url())
    profiles: dict[str, str] = {}
    with httpx.Client(base_url=url + "/api", timeout=10) as c:
        for i in range(20):
            secret = f"sk-before-{i}-{random.getrandbits(48):x}"
            r = c.post("/ai-profiles", json={"name": f"p{i}", "provider": "deepseek", "apiKey": secret,
                                             "imageApiKey": secret + "-img"})
            assert r.status_code == 201, r.text
            profiles[r.json()["id"]] = secret
        queued = [c.post("/ai-jobs", json={"type": "plan_episodes", "profileId": pid}).json()["id"]
                  for pid in list(profiles) * 3]
    live_before = stack.live_color()

    with Load(url, profiles) as load:
        time.sleep(0.5)
        r = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=300)
        time.sleep(0.5)
    assert r.code == 0, r.output
    res = r.json
    assert res["phase"] == "done" and res["restart"]["restarted"] and res["queue_resumed"]
    assert res["restart"]["previous_color"] == live_before and stack.live_color() != live_before
    assert res["swept"] + res["late_writes"] > 0, "the old api wrote no profile mid-rotation: the sweep went untested"
    assert not load.errors, load.errors[:5]
    assert load.requests > 50 and len(load.jobs) > 5

    new_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    assert new_raw != old_raw and envfile.read(stack.layout.env_file("worker"))["API_KEY_ENCRYPTION_KEY"] == new_raw
    assert res["new_fingerprint"] == crypto.fingerprint(crypto.derive_key(new_raw))
    assert all(s not in r.output for s in profiles.values()) and new_raw not in r.output and old_raw not in r.output

    # every job, queued before or created during the rotation, finishes; none fails
    jobs = queued + load.jobs
    deadline = time.monotonic() + 120
    with db.connect() as conn:
        while True:
            rows = conn.execute('SELECT "id", "status", "error" FROM "AIJob" WHERE "id" = ANY(%s)', (jobs,)).fetchall()
            failed = [(i, e) for i, s, e in rows if s == "failed"]
            assert not failed, failed[:3]
            if len(rows) == len(jobs) and all(s == "succeeded" for _i, s, _e in rows):
                break
            assert time.monotonic() < deadline, f"{sum(s != 'succeeded' for _i, s, _e in rows)} job(s) unfinished"
            time.sleep(0.2)
        # every profile, including those the old api wrote during the rotation, decrypts with the new key
        key = crypto.derive_key(new_raw)
        stored = dict(conn.execute('SELECT "id", "apiKeyEncrypted" FROM "AIProfile"').fetchall())
    assert set(stored) == set(profiles)
    assert {pid: crypto.decrypt(v, key) for pid, v in stored.items()} == profiles

    # the old color's api held the old key: it is stopped, not kept warm for a rollback
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["colors"][live_before]["services"]["api"]["state"] in ("STOPPED", "EXITED")
    assert st["colors"][live_before]["status"] == "cold"
    chk = run_cli("--json", "keys", "check", config=cfg)
    assert chk.code == 0, chk.output
    assert chk.json["decrypt_ok"] == chk.json["values"] == 2 * 20 + (len(profiles) - 20)


def test_db_is_unreachable_error_is_one_masked_line(env):
    bad = "postgresql://u:hunter2hunter2@127.0.0.1:1/x?schema=public"
    r = run_cli("keys", "check", "--database-url", bad, config=env["cfg"])
    assert r.code == 1 and "hunter2hunter2" not in r.output and "unreachable" in r.output
    assert len(r.stderr.strip().splitlines()) <= 2


def test_a_migration_recorded_as_failed_refuses_the_rotation_before_step_1(env):
    cfg, stack = env["cfg"], env["stack"]
    env_before = {svc: stack.layout.env_file(svc).read_bytes() for svc in ("api", "worker")}
    old_raw = envfile.read(stack.layout.env_file("api"))["API_KEY_ENCRYPTION_KEY"]
    db = parse_database_url(stack.app_database_url())
    made = {}
    with httpx.Client(base_url=stack.url + "/api", timeout=10) as c:
        for i in range(5):
            r = c.post("/ai-profiles", json={"name": f"p{i}", "provider": "deepseek", "apiKey": f"sk-pre-{i}"})
            assert r.status_code == 201, r.text
            made[r.json()["id"]] = f"sk-pre-{i}"
    with db.connect() as conn:
        before = conn.execute('SELECT "id", "apiKeyEncrypted" FROM "AIProfile" ORDER BY "id"').fetchall()
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name, logs) "
                     "VALUES ('failed-row', 'x', now(), '20991231000000_broken', 'ERROR: relation \"x\" does not exist')")
    try:
        r = run_cli("--yes", "keys", "rotate", "--generate", config=cfg, timeout=300)
        assert r.code == 3, r.output
        assert "20991231000000_broken is recorded as failed" in r.stderr and "nothing was changed" in r.stderr, r.stderr
        assert "step 1" not in r.stderr and "Traceback" not in r.output
        with db.connect() as conn:
            assert conn.execute('SELECT "id", "apiKeyEncrypted" FROM "AIProfile" ORDER BY "id"').fetchall() == before
        assert {svc: stack.layout.env_file(svc).read_bytes() for svc in ("api", "worker")} == env_before
        key = crypto.derive_key(old_raw)
        assert {i: crypto.decrypt(v, key) for i, v in before if i in made} == made
        dry = run_cli("--yes", "keys", "rotate", "--generate", "--dry-run", config=cfg)
        assert dry.code == 3 and "recorded as failed" in dry.stderr, dry.output
    finally:
        with db.connect() as conn:
            conn.execute("DELETE FROM _prisma_migrations WHERE id = 'failed-row'")


def _at_rest(stack) -> tuple[dict, list]:
    """The env files and the stored provider keys: what a refused rotation must leave byte-identical."""
    with parse_database_url(stack.app_database_url()).connect() as conn:
        rows = conn.execute('SELECT "id", "apiKeyEncrypted" FROM "AIProfile" ORDER BY "id"').fetchall()
    return {svc: stack.layout.env_file(svc).read_bytes() for svc in ("api", "worker", "web")}, rows


def test_a_deploy_lock_held_elsewhere_refuses_the_rotation_before_step_1(env):
    from aixsss_ops.deploy.lock import DeployLock

    cfg, stack = env["cfg"], env["stack"]
    before = _at_rest(stack)
    with DeployLock(stack.layout.deploy_dir) as held:
        held.acquire(1, {"action": "deploy", "version": "r-held-by-test"})
        r = run_cli("--yes", "keys", "rotate", "--generate", config=cfg, timeout=300)
    assert r.code == 3, r.output
    assert "holds the deploy lock" in r.stderr and "r-held-by-test" in r.stderr and "nothing was changed" in r.stderr
    assert "step 1" not in r.stderr and _at_rest(stack) == before


def test_env_files_the_contracts_refuse_stop_the_rotation_before_step_1(env):
    cfg, stack = env["cfg"], env["stack"]
    path = stack.layout.env_file("api")
    good = path.read_bytes()
    values = envfile.read(path)
    values["JWT_SECRET"] = "short"
    envfile.write(path, values)
    try:
        before = _at_rest(stack)
        for args in ((), ("--dry-run",)):
            r = run_cli("--yes", "keys", "rotate", "--generate", *args, config=cfg, timeout=300)
            assert r.code == 3, r.output
            assert "env files the contracts refuse" in r.stderr and "JWT_SECRET" in r.stderr, r.stderr
            assert "nothing was changed" in r.stderr and "step 1" not in r.stderr
            assert _at_rest(stack) == before
    finally:
        path.write_bytes(good)
