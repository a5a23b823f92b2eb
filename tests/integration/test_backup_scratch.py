"""A restore or verify killed while pg_restore loads its scratch database leaves that copy behind; the next restore,
verify, `backup cleanup` or `backup prune` drops it (its owner is gone), `doctor` names it meanwhile, and a scratch
database whose owner still runs is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psycopg

from aixsss_ops.backup.scratch import LOCK_CLASS, drop_orphans, is_scratch, orphans
from aixsss_ops.dburl import parse_database_url
from tests.cli import EXE, REPO
from tests.conftest import state_tmpdir
from tests.integration.backup_helpers import seed
from tests.integration.test_backup import Env, _big_table


def _databases(env: Env) -> set[str]:
    with psycopg.connect(env.pg.url("postgres").split("?")[0], autocommit=True) as c:
        return {r[0] for r in c.execute("SELECT datname FROM pg_database")}


def _kill_during_pg_restore(env: Env, *args: str) -> str:
    """Run the CLI, SIGKILL it once its scratch database exists and pg_restore loads it; the scratch's name."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    e.update(env.env, NO_COLOR="1")
    before = _databases(env)
    proc = subprocess.Popen([EXE, "--config", str(env.config), "--yes", *args], env=e, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    scratch = None
    while time.monotonic() < deadline and scratch is None:
        new = [d for d in _databases(env) - before if is_scratch(d)]
        scratch = new[0] if new else None
        assert proc.poll() is None, "finished before it could be killed: make the table bigger"
        time.sleep(0.02)
    assert scratch is not None, "no scratch database appeared"
    time.sleep(0.3)  # pg_restore at work
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return scratch


def test_a_killed_verify_and_restore_leave_scratch_copies_that_the_next_commands_drop(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-scratch-"))
    seed(env.url)
    _big_table(env.url, 400_000)
    b = env.create("--no-objects")

    verify_copy = _kill_during_pg_restore(env, "backup", "verify", b["id"], "--restore", "--jobs", "1")
    assert verify_copy.startswith("aixsss_verify_")
    time.sleep(0.5)
    assert verify_copy in _databases(env)  # left behind by the kill
    admin = parse_database_url(env.pg.url("postgres"))
    assert verify_copy in orphans(admin)

    # doctor names it (and changes nothing)
    r = env.cli("--json", "doctor", "--only", "backup.scratch", "--only", "postgres.reachable")
    found = {f["check"]: f for f in r.json["findings"]}
    assert found["backup.scratch"]["status"] == "fail" and verify_copy in found["backup.scratch"]["message"]
    assert verify_copy in _databases(env)

    # the next restore drops it first; killed the same way, it leaves its own copy, which its rerun drops
    restore_copy = _kill_during_pg_restore(env, "backup", "restore", b["id"], "--jobs", "1")
    assert "_restoring_" in restore_copy
    time.sleep(0.5)
    assert verify_copy not in _databases(env) and restore_copy in _databases(env)
    r = env.cli("--yes", "--json", "backup", "restore", b["id"])
    assert r.code == 0, r.output
    assert restore_copy not in _databases(env)
    assert not [d for d in _databases(env) if is_scratch(d)]


def test_cleanup_drops_orphans_but_never_a_scratch_database_whose_owner_runs(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-scratch-"))
    admin = parse_database_url(env.pg.url("postgres"))
    with psycopg.connect(env.pg.url("postgres").split("?")[0], autocommit=True) as c:
        c.execute("CREATE DATABASE aixsss_verify_0123456789ab")
        c.execute("CREATE DATABASE x_restoring_abcdef")
    with psycopg.connect(env.pg.url("postgres").split("?")[0], autocommit=True) as owner:
        owner.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, "x_restoring_abcdef"))
        r = env.cli("--json", "backup", "cleanup")
        assert r.code == 0, r.output
        assert r.json["scratch_dropped"] == ["aixsss_verify_0123456789ab"]
        assert "x_restoring_abcdef" in _databases(env)  # its owner runs
    assert drop_orphans(admin) == ["x_restoring_abcdef"]  # once the owner's session ended
    assert not {"aixsss_verify_0123456789ab", "x_restoring_abcdef"} & _databases(env)


def test_postgres_failing_mid_backup_is_one_clear_error_and_the_next_run_cleans(pg_server, s3_server):
    """Every session of the database is terminated while `backup create` runs (what a shutting-down server does to
    them): one error naming PostgreSQL (exit 1), no internal error, nothing complete; the next run cleans up."""
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-pgfail-"))
    seed(env.url)
    _big_table(env.url, 300_000)
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    e.update(env.env, NO_COLOR="1")
    proc = subprocess.Popen([EXE, "--config", str(env.config), "backup", "create", "--no-objects", "--jobs", "1"],
                            env=e, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(env.pg.url("postgres").split("?")[0], autocommit=True) as c:
        while proc.poll() is None:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (env.db,))
            time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "internal error" not in err and "Traceback" not in err
    assert "PostgreSQL" in err or "postgres" in err.lower(), err
    listed = env.cli("--json", "backup", "list").json["backups"]
    assert all(b["status"] != "complete" for b in listed)
    done = env.create("--no-objects")
    assert [b["status"] for b in env.cli("--json", "backup", "list").json["backups"]] == ["complete"]
    assert done["id"]


def test_a_killed_restore_leaves_no_decrypted_dump_behind(pg_server, s3_server):
    """The decrypted copy of an encrypted dump (the restore's work folder) of a SIGKILLed restore is removed by the
    next run; while its owner runs it is never touched, and it is private (0700)."""
    import stat

    env = Env(pg_server, s3_server, state_tmpdir("aixsss-work-"))
    key = {"AIXSSS_BACKUP_ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef-backup"}
    env.env.update(key)
    seed(env.url)
    _big_table(env.url, 400_000)
    b = env.create("--encrypt", "--no-objects")
    _kill_during_pg_restore(env, "restore", b["id"], "--target-db", "never_finished", "--jobs", "1")
    left = [p for p in env.dir.iterdir() if p.name.startswith(".restore-")]
    assert len(left) == 1 and stat.S_IMODE(left[0].stat().st_mode) == 0o700
    assert any(p.name.endswith(".dat") or p.name == "toc.dat" for p in (left[0] / "db").iterdir())  # plaintext
    r = env.cli("--json", "backup", "verify", b["id"], "--restore")
    assert r.code == 0, r.output
    assert not [p for p in env.dir.iterdir() if p.name.startswith((".restore-", ".verify-"))]
