"""The embedded stack from an empty state directory: real Postgres, Redis, SeaweedFS, nginx, api and worker."""

from __future__ import annotations

import socket
import subprocess

import httpx
import psycopg
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import stack_config, state_tmpdir


@pytest.fixture(scope="module")
def stack_cfg():
    root = state_tmpdir("aixsss-stack-")
    cfg = stack_config(root)
    yield cfg
    run_cli("stack", "down", config=cfg, timeout=180)


@pytest.fixture(scope="module")
def up(stack_cfg):
    r = run_cli("--json", "stack", "up", config=stack_cfg, timeout=240)
    assert r.code == 0, r.output
    return r.json


def _app_db(cfg_path) -> psycopg.Connection:
    stack = open_stack(load_config(cfg_path))
    from aixsss_ops import envfile

    url = envfile.read(stack.layout.env_file("api"))["DATABASE_URL"]
    return parse_database_url(url).connect()


def test_up_from_empty_state_brings_every_service_up(up, stack_cfg):
    units = {s["unit"]: s for s in up["services"]}
    assert set(units) == {"postgres", "redis", "s3", "proxy", "api-blue", "worker-blue"}
    assert all(s["state"] == "RUNNING" and s["healthy"] for s in units.values()), units
    assert up["healthy"] is True
    assert any(a.startswith("applied migration") for a in up["actions"])
    status = run_cli("--json", "stack", "status", config=stack_cfg)
    assert status.code == 0 and status.json["healthy"]


def test_api_answers_health_through_nginx(up):
    r = httpx.get(up["url"] + "/api/health", timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and isinstance(body["ts"], int)
    assert body["color"] == "blue"
    page = httpx.get(up["url"] + "/", timeout=5)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_env_files_are_private_and_hold_no_example_secrets(up):
    from pathlib import Path

    env_dir = Path(up["state_dir"]) / "env"
    for name in ("api", "worker", "web"):
        f = env_dir / f"{name}.env"
        assert f.stat().st_mode & 0o777 == 0o600
    api = (env_dir / "api.env").read_text()
    worker = (env_dir / "worker.env").read_text()
    key = next(line for line in api.splitlines() if line.startswith("API_KEY_ENCRYPTION_KEY="))
    assert key in worker.splitlines()
    assert "please_change_me" not in api


def test_profile_and_job_end_to_end_then_data_survives_down_up(up, stack_cfg):
    smoke = run_cli("--json", "stack", "smoke", config=stack_cfg, timeout=120)
    assert smoke.code == 0, smoke.output
    job_id = smoke.json["job_id"]
    with _app_db(stack_cfg) as conn:
        status, result = conn.execute('SELECT status::text, result FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()
    assert status == "succeeded" and result
    stack = open_stack(load_config(stack_cfg))
    bucket = stack.cfg.s3.bucket
    artifact = stack.s3_target().client().get_object(bucket, f"artifacts/{job_id}.json").read()
    assert job_id.encode() in artifact or len(artifact) > 0

    down = run_cli("--json", "stack", "down", config=stack_cfg, timeout=180)
    assert down.code == 0, down.output
    assert run_cli("stack", "status", config=stack_cfg).code == 3
    again = run_cli("--json", "stack", "up", config=stack_cfg, timeout=240)
    assert again.code == 0, again.output
    assert "initdb" not in again.json["actions"]
    assert not any(a.startswith("applied migration") for a in again.json["actions"])

    with _app_db(stack_cfg) as conn:
        assert conn.execute('SELECT status::text FROM "AIJob" WHERE id = %s', (job_id,)).fetchone()[0] == "succeeded"
    assert stack.s3_target().client().get_object(bucket, f"artifacts/{job_id}.json").read() == artifact


def test_up_is_idempotent(up, stack_cfg):
    again = run_cli("--json", "stack", "up", config=stack_cfg, timeout=240)
    assert again.code == 0, again.output
    assert not any(a.startswith("started") for a in again.json["actions"]), again.json["actions"]


def test_logs_of_a_service(up, stack_cfg):
    r = run_cli("stack", "logs", "api-blue", "-n", "50", config=stack_cfg)
    assert r.code == 0 and r.stdout.strip()
    bad = run_cli("stack", "logs", "nosuch", config=stack_cfg)
    assert bad.code == 2 and "unknown service" in bad.stderr


def test_a_taken_port_fails_naming_it_and_starts_nothing():
    root = state_tmpdir("aixsss-taken-")
    cfg = stack_config(root)
    redis_port = load_config(cfg).ports.redis
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", redis_port))
        holder.listen()
        r = run_cli("stack", "up", config=cfg, timeout=120)
    assert r.code == 2, r.output
    assert f"port {redis_port} (redis) is already in use" in r.stderr
    assert "Traceback" not in r.output
    out = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
    assert out.stdout.strip() == "", "nothing of the stack may keep running"


def test_state_is_private_and_redis_needs_its_password(up, stack_cfg):
    import os
    import stat

    from aixsss_ops import envfile, probes
    from aixsss_ops.proxy.nginx import worker_group

    cfg = load_config(stack_cfg)
    root = cfg.state
    redis_url = envfile.read(root / "env" / "api.env")["REDIS_URL"]
    password = redis_url.split("://:", 1)[1].split("@", 1)[0]
    assert len(password) >= 24
    assert not probes.redis_ping(cfg.host, cfg.ports.redis)[0]  # no password: NOAUTH
    assert probes.redis_ping(cfg.host, cfg.ports.redis, password=password)[0]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in ps and "redis-server" in ps
    # what the services wrote is their owner's alone
    for name in ("logs", "redis", "s3", "env", "secrets", "supervisor"):
        top = root / name
        assert stat.S_IMODE(top.stat().st_mode) == 0o700, name
        for dirpath, dirnames, filenames in os.walk(top):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                mode = os.lstat(p).st_mode
                assert stat.S_ISLNK(mode) or not mode & 0o077, f"{p} is {oct(stat.S_IMODE(mode))}"
    assert any((root / "redis").rglob("*.aof")) and any((root / "logs").iterdir())
    # the api sockets: reachable through their folder by the owner and the proxy's workers only
    run = (root / "run").stat()
    assert stat.S_IMODE(run.st_mode) == 0o750
    if os.geteuid() == 0:
        assert run.st_gid == worker_group()
    assert any(p.name.endswith(".sock") for p in (root / "run").iterdir())
