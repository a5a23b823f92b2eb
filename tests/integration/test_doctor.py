"""`aixsss-ops doctor` against a whole embedded stack of its own: healthy, each dependency stopped, all three
stopped, an evicting Redis, a wrong encryption key, a hanging dependency. No secret in any output."""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.envcheck.sources import secret_values
from aixsss_ops.output import is_secret_name
from aixsss_ops.stack.engines import open_stack
from aixsss_ops.stack.manager import Stack
from tests.cli import run_cli
from tests.conftest import findings_not_ok, stack_config, state_tmpdir

TIMEOUT = 3.0  # doctor's default per-check timeout
DEPS = {"postgres": "postgres.reachable", "redis": "redis.reachable", "s3": "s3.reachable"}


@pytest.fixture(scope="module")
def cfg():
    root = state_tmpdir("aixsss-doctor-")
    path = stack_config(root, backup={"dir": str(root / "backups")})
    r = run_cli("--json", "stack", "up", config=path, timeout=240)
    assert r.code == 0, r.output
    try:
        for args in (("stack", "smoke"), ("backup", "create"), ("backup", "verify", "latest")):
            r = run_cli(*args, config=path, timeout=240)
            assert r.code == 0, r.output
        yield path
    finally:
        run_cli("stack", "down", config=path, timeout=180)


@pytest.fixture(scope="module")
def stack(cfg) -> Stack:
    return open_stack(load_config(cfg))


def known_secrets(stack: Stack) -> list[str]:
    envs = {s: envfile.read(stack.layout.env_file(s)) for s in ("api", "worker", "web")}
    out = secret_values(envs) + [stack.cfg.s3.secret_key.get_secret_value()]
    out += list(json.loads(stack.layout.secrets_file.read_text()).values())
    return out


def doctor(cfg: Path, stack: Stack, *args: str, env: dict | None = None):
    """Run doctor (--json unless asked otherwise), check that no secret leaks, return (result, seconds)."""
    t = time.monotonic()
    r = run_cli(*args, config=cfg, env={"COLUMNS": "250", **(env or {})}, timeout=120)
    took = time.monotonic() - t
    for s in known_secrets(stack) + [v for k, v in (env or {}).items() if is_secret_name(k)]:
        if len(s) >= 8:
            assert s not in r.stdout and s not in r.stderr, "a secret leaked into doctor's output"
    return r, took


def by_check(report: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for f in report["findings"]:
        out.setdefault(f["check"], []).append(f)
    return out


def status_of(report: dict, check: str) -> str:
    return by_check(report)[check][0]["status"]


def wait_doctor_ok(cfg: Path, stack: Stack, only: str, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        r, _ = doctor(cfg, stack, "doctor", "--json", "--only", only)
        if r.code == 0:
            return
        assert time.monotonic() < deadline, r.stdout
        time.sleep(0.5)


def stop(stack: Stack, *units: str) -> None:
    for u in units:
        stack.sup.stop(u, wait=False)
    stack.wait_stopped(list(units))
    assert all(stack.unit_state(u) == "STOPPED" for u in units)


def start(cfg: Path, stack: Stack, *units: str) -> None:
    for u in units:
        stack.sup.start(u)
    for u in units:
        wait_doctor_ok(cfg, stack, u)
    wait_doctor_ok(cfg, stack, "queue")  # the worker reconnected


def test_healthy_stack_every_check_ok(cfg, stack):
    r, _ = doctor(cfg, stack, "doctor", "--json")
    assert r.code == 0, r.stdout
    report = r.json
    bad = findings_not_ok(report)
    assert not bad, bad
    checks = by_check(report)
    for name in ("env", "config.clock-skew", "postgres.reachable", "postgres.migrations", "postgres.connections",
                 "keys.decrypt", "redis.reachable", "redis.maxmemory-policy", "redis.persistence", "redis.memory",
                 "queue.name-match", "queue.workers", "queue.oldest-waiting", "queue.failed-rising", "s3.reachable",
                 "s3.bucket", "s3.versioning", "s3.lifecycle", "backup.newest", "backup.verified", "deploy.active",
                 "deploy.idle-color", "deploy.lock", "deploy.proxy-config", "host.disk-state"):
        assert name in checks, name
    assert "decrypt" in checks["keys.decrypt"][0]["message"]  # the smoke test stored a provider key
    assert report["ok"] is True and report["summary"]["fail"] == 0


def test_human_table_lists_checks_and_statuses(cfg, stack):
    r, _ = doctor(cfg, stack, "doctor")
    assert r.code == 0, r.output
    lines = r.stdout.splitlines()
    for check in ("postgres.reachable", "redis.maxmemory-policy"):  # one line per finding: status, check, message
        assert any(line.startswith("ok") and f"  {check}: " in line for line in lines), r.stdout
    assert "0 failure(s)" in r.stdout


@pytest.mark.parametrize("dep", ["postgres", "redis", "s3"])
def test_each_dependency_stopped_is_named_with_a_hint(cfg, stack, dep):
    stop(stack, dep)
    try:
        r, took = doctor(cfg, stack, "doctor", "--json")
        assert r.code == 3, r.stdout
        report = r.json
        probe = by_check(report)[DEPS[dep]][0]
        assert probe["status"] == "fail" and "unreachable" in probe["message"]
        assert "stack up" in probe["fix"]
        dependents = [f for f in report["findings"] if f["check"].startswith(dep + ".") and f["check"] != DEPS[dep]]
        assert dependents and all(f["status"] == "skipped" for f in dependents), dependents
        for other, check in DEPS.items():
            if other != dep:
                assert status_of(report, check) == "ok"
        assert took < 2 * TIMEOUT + 10
    finally:
        start(cfg, stack, dep)


def test_all_three_stopped_doctor_still_finishes_quickly(cfg, stack):
    stop(stack, "postgres", "redis", "s3")
    try:
        r, took = doctor(cfg, stack, "doctor", "--json")
        assert r.code == 3, r.stdout
        report = r.json
        for check in DEPS.values():
            f = by_check(report)[check][0]
            assert f["status"] == "fail" and f["fix"], f
        assert took < 2 * TIMEOUT + 10, took  # the per-check timeout plus start-up, never a hang
        human, _ = doctor(cfg, stack, "doctor")
        assert human.code == 3 and "3 failure(s)" in human.stdout
    finally:
        start(cfg, stack, "postgres", "redis", "s3")


def test_evicting_redis_policy_fails_the_check(cfg, stack):
    import redis

    r = redis.Redis.from_url(envfile.read(stack.layout.env_file("api"))["REDIS_URL"], socket_timeout=5)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        res, _ = doctor(cfg, stack, "doctor", "--json")
        assert res.code == 3
        f = by_check(res.json)["redis.maxmemory-policy"][0]
        assert f["status"] == "fail" and "allkeys-lru" in f["message"] and "noeviction" in f["fix"]
    finally:
        r.config_set("maxmemory-policy", "noeviction")
    res, _ = doctor(cfg, stack, "doctor", "--json", "--only", "redis")
    assert res.code == 0


def test_wrong_encryption_key_is_caught_before_users_do(cfg, stack):
    import base64

    other = base64.b64encode(secrets.token_bytes(32)).decode()
    r, _ = doctor(cfg, stack, "doctor", "--json", "--only", "keys", "--only", "postgres",
                  env={"API_KEY_ENCRYPTION_KEY": other})
    assert r.code == 3
    f = by_check(r.json)["keys.decrypt"][0]
    assert f["status"] == "fail" and "do not decrypt" in f["message"], f
    assert other not in r.output


def test_a_hanging_dependency_is_cut_off_by_the_timeout(cfg, stack):
    """A TCP server that accepts and never answers: the check fails at its timeout, doctor returns."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    conns = []
    stop_flag = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop_flag.is_set():
            with contextlib.suppress(OSError):
                conns.append(srv.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    try:
        port = srv.getsockname()[1]
        r, took = doctor(cfg, stack, "doctor", "--json", "--only", "redis", "--only", "queue", "--timeout", "1",
                         env={"REDIS_URL": f"redis://127.0.0.1:{port}"})
        assert r.code == 3
        assert status_of(r.json, "redis.reachable") == "fail"
        assert took < 2 * 1 + 8, took
    finally:
        stop_flag.set()
        srv.close()
        for c in conns:
            c.close()


def test_backup_older_than_the_rpo_fails(cfg, stack):
    r, _ = doctor(cfg, stack, "doctor", "--json", "--only", "backup", env={"AIXSSS_OPS_BACKUP__RPO_HOURS": "0.0001"})
    assert r.code == 3
    f = by_check(r.json)["backup.newest"][0]
    assert f["status"] == "fail" and "RPO" in f["message"] and "backup create" in f["fix"]


def test_stale_deploy_lock_note_is_a_warning(cfg, stack):
    note = stack.layout.deploy_dir / "deploy.lock.json"
    note.write_text(json.dumps({"pid": 999999, "host": "h", "user": "u", "since": "2026-01-01T00:00:00+00:00"}))
    try:
        r, _ = doctor(cfg, stack, "doctor", "--json", "--only", "deploy")
        assert r.code == 0
        f = by_check(r.json)["deploy.lock"][0]
        assert f["status"] == "warn" and "lock release" in f["fix"]
    finally:
        note.unlink(missing_ok=True)


def test_only_and_skip_select_checks(cfg, stack):
    r, _ = doctor(cfg, stack, "doctor", "--json", "--only", "redis", "--skip", "redis.memory")
    assert r.code == 0
    names = {f["check"] for f in r.json["findings"]}
    assert names == {"redis.reachable", "redis.maxmemory-policy", "redis.persistence"}
    bad, _ = doctor(cfg, stack, "doctor", "--json", "--only", "nosuch")
    assert bad.code == 2 and bad.json["ok"] is False and "nosuch" in bad.json["error"]
