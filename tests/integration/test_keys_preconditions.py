"""`keys rotate` meeting what it cannot get past: a row another session keeps locked (SIGTERM while it waits; a
wait longer than the lock timeout) and a migration recorded as failed, which would refuse its restart. Each ends
with every value decryptable with the old key and the env files unchanged."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import redis

from aixsss_ops import crypto
from aixsss_ops.dburl import parse_database_url
from tests.cli import EXE, REPO, run_cli
from tests.integration.keys_helpers import deployment_with_key, insert_profiles

OLD = crypto.generate_key()


@pytest.fixture
def dep(pg_server, redis_server, queue_name):
    return deployment_with_key(pg_server, redis_server, queue_name, OLD)


def queue_paused(dep) -> bool:
    return redis.Redis.from_url(dep.redis_url).hexists(f"bull:{dep.queue}:meta", "paused")


def new_key_values(dep, new: str) -> int:
    key = crypto.derive_key(new)
    n = 0
    for vals in dep.values().values():
        for v in vals:
            if v is not None:
                try:
                    crypto.decrypt(v, key)
                    n += 1
                except crypto.CryptoError:
                    pass
    return n


def lock_row(dep, rid: str, app: str):
    """A session holding ``rid`` with SELECT … FOR UPDATE in an open transaction (until it is closed)."""
    conn = parse_database_url(dep.database_url).connect(autocommit=False, application_name=app)
    conn.execute('SELECT "id" FROM "AIProfile" WHERE "id" = %s FOR UPDATE', (rid,))
    return conn


def waiting_on_locks(dep) -> int:
    with dep.connect() as c:
        return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                         "AND wait_event_type = 'Lock'").fetchone()[0]


def assert_reverted(dep, plain, new) -> None:
    assert dep.plaintexts(OLD) == plain and new_key_values(dep, new) == 0
    assert dep.env("api")["API_KEY_ENCRYPTION_KEY"] == OLD and "API_KEY_ENCRYPTION_KEY_NEXT" not in dep.env("api")
    assert not queue_paused(dep) and dep.progress()["phase"] == "reverted"


def test_sigterm_to_the_process_group_while_a_row_lock_blocks_the_rotation_reverts_cleanly(dep):
    """As a supervisor stops a command (systemd's control group, `kill -- -PGID`): the pool workers get the SIGTERM
    too; they must neither print tracebacks nor die under the revert, and the blocked write must not hold it up."""
    plain = insert_profiles(dep, OLD, 300)
    new = crypto.generate_key()
    locker = lock_row(dep, "p000150", "test-locker")
    try:
        p = subprocess.Popen([EXE, "--config", str(dep.cfg), "--yes", "keys", "rotate", "--new-key", new,
                              "--batch-size", "20", "--workers", "2"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             env={**os.environ, "NO_COLOR": "1"})
        deadline = time.monotonic() + 60
        while not ((pr := dep.progress()) and pr.get("phase") == "reencrypting" and waiting_on_locks(dep)):
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        time.sleep(0.5)
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=90)
        took = time.monotonic() - t0
    finally:
        locker.close()
    assert p.returncode == 1, out + err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err, err
    assert "interrupted" in err and "decryptable with the old key" in err and "env files are unchanged" in err, err
    assert took < 30, f"the revert (default lock timeout 60 s) waited {took:.0f}s: the blocked write was not cancelled"
    assert_reverted(dep, plain, new)


def test_a_row_locked_longer_than_the_lock_timeout_fails_naming_the_session_and_reverts(dep):
    plain = insert_profiles(dep, OLD, 300)
    new = crypto.generate_key()
    locker = lock_row(dep, "p000150", "test-locker")
    try:
        pid = locker.info.backend_pid
        user = locker.execute("SELECT current_user").fetchone()[0]
        r = run_cli("--yes", "keys", "rotate", "--new-key", new, "--batch-size", "20", "--lock-timeout", "1",
                    config=dep.cfg, timeout=120)
        assert r.code == 1, r.output
        assert "Traceback" not in r.output
        assert "lock timeout (1s)" in r.stderr and f"session pid {pid} (user {user}, application_name 'test-locker'" \
            in r.stderr, r.stderr
        assert "row locks on 1 profile(s)" in r.stderr and f"pid {pid} ends the session" in r.stderr, r.stderr
        assert "decryptable with the old key" in r.stderr and "env files are unchanged" in r.stderr, r.stderr
        assert_reverted(dep, plain, new)
    finally:
        locker.close()
