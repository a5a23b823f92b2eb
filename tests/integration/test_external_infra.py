"""Managed infra: ``postgres.external``, ``redis.external`` and ``s3.external`` on the local runtime.

The session's own PostgreSQL, Redis and SeaweedFS stand for the managed services (a database and a role made for
the app, a queue name and a bucket of its own). ``stack up`` must not run any of them, the app must use them, and
migrations, backups (create, verify, restore), key rotation, the queue commands and doctor must work against them
with nothing but the env files ``stack up`` wrote.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid

import httpx
import psycopg
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from tests.cli import run_cli
from tests.conftest import findings_not_ok, stack_config, state_tmpdir

pytestmark = pytest.mark.slow
APP_ROLE = "aixsss"  # the app's role on the managed server, as ops.toml's postgres.user says


def managed_database(pg_server) -> tuple[str, str]:
    """A database on the 'managed' server owned by a role of its own (CREATEDB, as a managed service's main user
    has): (database, password)."""
    db = f"ext_{uuid.uuid4().hex[:10]}"
    role = f"{APP_ROLE}_{db}"
    password = secrets.token_urlsafe(18)
    with psycopg.connect(pg_server.url(schema=None), autocommit=True) as c:
        c.execute(f"CREATE ROLE \"{role}\" LOGIN CREATEDB PASSWORD '{password}'")
        c.execute(f'CREATE DATABASE "{db}" OWNER "{role}"')
    return db, password


@pytest.fixture(scope="module")
def ext(pg_server, redis_server, s3_server):
    root = state_tmpdir("aixsss-external-")
    db, password = managed_database(pg_server)
    role = f"{APP_ROLE}_{db}"
    bucket = f"ext-{uuid.uuid4().hex[:10]}"
    queue = f"q-{uuid.uuid4().hex[:10]}"
    cfg = stack_config(root, postgres={"external": True, "database": db, "user": role}, redis={"external": True},
                       s3={"external": True, "bucket": bucket},
                       deploy={"health_interval": 0.2, "health_threshold": 2, "health_timeout": 20.0,
                               "backup": False})
    text = cfg.read_text().replace("[app]\n", f'[app]\nqueue = "{queue}"\n')
    cfg.write_text(text)
    url = f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/{db}?schema=public"
    managed = {"DATABASE_URL": url, "REDIS_URL": redis_server.url, "S3_ENDPOINT": s3_server.endpoint,
               "S3_ACCESS_KEY": s3_server.access_key, "S3_SECRET_KEY": s3_server.secret_key}
    r = run_cli("stack", "up", "--json", config=cfg, env=managed, timeout=300)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "root": root, "db": db, "role": role, "password": password, "bucket": bucket, "queue": queue,
           "url": url, "managed": managed, "up": r, "pg": pg_server}
    run_cli("stack", "down", config=cfg, timeout=180)


def processes_under(root) -> list[str]:
    """The command lines of every process whose arguments name ``root`` (what the stack runs from its state)."""
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(root) in line and "pytest" not in line]


def test_up_runs_none_of_the_external_services_and_the_app_uses_them(ext):
    report = ext["up"].json
    by_unit = {s["unit"]: s for s in report["services"]}
    for service in ("postgres", "redis", "s3"):
        assert by_unit[service]["role"] == "external" and by_unit[service]["state"] == "EXTERNAL", by_unit[service]
        assert by_unit[service]["healthy"] is True, by_unit[service]
    assert by_unit["postgres"]["detail"].startswith(f"external {ext['pg'].host}:{ext['pg'].port}")
    procs = processes_under(ext["root"])
    assert any("nginx" in p for p in procs) and any("supervisord" in p for p in procs), procs
    for program in ("postgres", "redis-server", "weed"):
        assert not any(p.split()[0].endswith(program) for p in procs), (program, procs)
    assert not (ext["root"] / "state" / "postgres").exists()
    # the app's env files name the managed services, and nothing the tool printed shows their secrets
    api = envfile.read(ext["root"] / "state" / "env" / "api.env")
    assert api["DATABASE_URL"] == ext["url"] and api["S3_ENDPOINT"] == ext["managed"]["S3_ENDPOINT"]
    assert api["S3_BUCKET"] == ext["bucket"]
    assert ext["password"] not in ext["up"].output and ext["managed"]["S3_SECRET_KEY"] not in ext["up"].output
    # the migrations went into the managed database, the bucket was made there
    with psycopg.connect(ext["url"].split("?")[0]) as c:
        applied = c.execute("SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL").fetchone()[0]
    assert applied >= 1
    names = [b.name for b in _client(ext).list_buckets()]
    assert ext["bucket"] in names
    base = f"http://127.0.0.1:{load_config(ext['cfg']).ports.proxy}"
    assert httpx.get(f"{base}/api/health", timeout=5).json()["ok"] is True


def _client(ext):
    from aixsss_ops.s3 import S3Target

    m = ext["managed"]
    return S3Target(m["S3_ENDPOINT"], m["S3_ACCESS_KEY"], m["S3_SECRET_KEY"]).client()


def test_smoke_queue_backup_keys_and_doctor_work_against_the_managed_services(ext):
    cfg = ext["cfg"]
    r = run_cli("stack", "smoke", config=cfg, timeout=180)
    assert r.code == 0, r.output
    r = run_cli("queue", "stats", "--json", config=cfg)
    assert r.code == 0, r.output
    assert r.json["queue"] == ext["queue"] and r.json["exists"]  # the smoke job went through the managed Redis
    r = run_cli("queue", "workers", "--json", config=cfg)
    assert r.code == 0, r.output
    assert r.json["workers"], r.output  # the app's worker listens on the managed Redis
    r = run_cli("migrate", "status", "--json", config=cfg)
    assert r.code == 0, r.output
    r = run_cli("backup", "create", "--json", config=cfg, timeout=300)
    assert r.code == 0, r.output
    backup = r.json
    r = run_cli("backup", "verify", "latest", config=cfg, timeout=300)
    assert r.code == 0, r.output
    r = run_cli("keys", "check", "--json", config=cfg)
    assert r.code == 0, r.output
    r = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=300)
    assert r.code == 0, r.output
    new_key = envfile.read(ext["root"] / "state" / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"]
    assert new_key not in r.output
    r = run_cli("keys", "check", "--json", config=cfg)
    assert r.code == 0, r.output
    r = run_cli("doctor", "--json", config=cfg, timeout=180)
    # doctor examines the managed services themselves: the session's Redis runs without a memory ceiling
    assert [(f["check"], f["status"]) for f in findings_not_ok(r.json)] == [("redis.memory", "warn")], r.stdout
    assert r.code == 0, r.output
    for text in (r.stdout, r.stderr):
        assert ext["password"] not in text and ext["managed"]["S3_SECRET_KEY"] not in text
    # a row written after the backup is gone after restoring it, in the managed database
    with psycopg.connect(ext["url"].split("?")[0], autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS after_backup (x int)")
    before = _app_pids(cfg)
    r = run_cli("--yes", "backup", "restore", backup["id"], config=cfg, timeout=400)
    assert r.code == 0, r.output
    with psycopg.connect(ext["url"].split("?")[0]) as c:
        gone = c.execute("SELECT to_regclass('public.after_backup') IS NULL").fetchone()[0]
    assert gone
    # the app on the managed database was stopped for the switch and started again: new processes
    assert "stopping the api and worker" in r.output and "starting the api and worker again" in r.output
    after = _app_pids(cfg)
    assert before.keys() == after.keys() and not set(before.values()) & set(after.values()), (before, after)
    r = run_cli("stack", "status", "--json", config=cfg)
    assert r.code == 0 and r.json["healthy"], r.output


def _app_pids(cfg) -> dict[str, int]:
    r = run_cli("stack", "status", "--json", config=cfg)
    assert r.code == 0, r.output
    return {s["unit"]: s["pid"] for s in r.json["services"] if s["unit"].split("-")[0] in ("api", "worker")
            and s.get("pid")}


def test_down_leaves_the_managed_services_running(ext, pg_server, redis_server):
    r = run_cli("stack", "down", config=ext["cfg"], timeout=180)
    assert r.code == 0, r.output
    assert not processes_under(ext["root"])
    with psycopg.connect(ext["url"].split("?")[0]) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    import redis

    assert redis.Redis.from_url(redis_server.url).ping()
    # up again needs no environment: the env files keep what names the managed services
    r = run_cli("stack", "up", config=ext["cfg"], timeout=300)
    assert r.code == 0, r.output


def test_up_without_what_names_an_external_service_is_refused_before_anything_runs(pg_server):
    root = state_tmpdir("aixsss-external-missing-")
    cfg = stack_config(root, postgres={"external": True}, supervisor={"start_timeout": 5})
    r = run_cli("stack", "up", config=cfg, env={"DATABASE_URL": ""}, timeout=120)
    assert r.code == 2, r.output
    assert "DATABASE_URL" in r.output and "postgres.external" in r.output
    assert not processes_under(root)
    r = run_cli("stack", "up", config=cfg, env={"DATABASE_URL": "postgresql://u:p@127.0.0.1:1/none"}, timeout=120)
    assert r.code != 0 and "external postgres does not answer" in r.output, r.output
    run_cli("stack", "down", config=cfg, timeout=120)


def test_pitr_with_an_external_postgres_is_refused_at_load():
    root = state_tmpdir("aixsss-external-pitr-")
    cfg = stack_config(root, postgres={"external": True}, backup={"pitr": True})
    r = run_cli("config", "show", config=cfg)
    assert r.code == 2, r.output
    assert "postgres.external" in r.output and "point-in-time" in r.output
