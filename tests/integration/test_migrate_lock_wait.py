"""A migration whose statement waits for a table lock gives up after a lock_timeout instead of queueing forever
(and the live app's queries with it): rolled back, recorded as rolled back, the blocker named, retried later."""

from __future__ import annotations

import json

import psycopg
import pytest

from aixsss_ops.migrate import deploy, status
from aixsss_ops.migrate.apply import MigrationFailed
from tests.integration.migrate_helpers import cli, connect, ledger, write_migrations

INIT = """CREATE TABLE "User" ("id" TEXT NOT NULL PRIMARY KEY, "email" TEXT NOT NULL);
CREATE TABLE "Project" ("id" TEXT NOT NULL PRIMARY KEY, "ownerId" TEXT NOT NULL REFERENCES "User"("id"));
INSERT INTO "User" VALUES ('u1', 'a@example.com');
INSERT INTO "Project" VALUES ('p1', 'u1');
"""
ADD_COL = 'ALTER TABLE "Project" ADD COLUMN "note" TEXT;\n'
NAME = "20261207000000_add_col"


def _columns(url: str) -> set[str]:
    with connect(url) as c:
        return {r[0] for r in c.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'Project'").fetchall()}


def _holding_project(url: str) -> psycopg.Connection:
    """An app session with an open transaction holding ACCESS SHARE on "Project" (a slow report, a leaked tx)."""
    holder = connect(url)
    holder.execute("SET application_name = 'app-report'")
    holder.execute("BEGIN")  # autocommit connection: the transaction stays open until ROLLBACK
    holder.execute('LOCK TABLE "Project" IN ACCESS SHARE MODE')
    return holder


def test_a_held_table_lock_fails_the_migration_cleanly_and_a_rerun_applies_it(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)
    write_migrations(mdir, {NAME: ADD_COL})
    holder = _holding_project(database_url)
    pid = holder.info.backend_pid
    try:
        # the setting of ops.toml (here from the environment) bounds the wait; the run would hang without it
        r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url, timeout=60,
                env={"AIXSSS_OPS_DEPLOY__MIGRATION_STATEMENT_LOCK_TIMEOUT": "1.5"})
        assert r.returncode == 1, r.stderr  # an operation that failed
        err = " ".join(r.stderr.split())
        assert "gave up after waiting 1.5s" in err, err
        assert f"applying {NAME} (1/1)" in err
        assert "lock timeout" in err and "55P03" in err
        assert f"pid {pid}" in err and "'app-report'" in err and "idle in transaction" in err
        assert 'AccessShareLock on "Project"' in err
        assert "retried" in err and "Fix the script or the data" not in err

        # the app reads the table again at once: nothing is queued on it any more
        with connect(database_url) as app:
            app.execute("SET lock_timeout = '1s'")
            assert app.execute('SELECT count(*) FROM "Project"').fetchone()[0] == 1
        assert "note" not in _columns(database_url)  # rolled back
        rows = [x for x in ledger(database_url) if x["migration_name"] == NAME]
        assert len(rows) == 1
        failed = rows[0]
        assert failed["finished_at"] is None and failed["rolled_back_at"] is not None  # failed, rolled back
        assert "lock timeout" in failed["logs"] and "55P03" in failed["logs"] and f"pid {pid}" in failed["logs"]
        assert status(database_url, mdir).names("pending") == [NAME]  # not "failed": no resolve needed

        # the Python entry point gives up after the timeout it is given
        with pytest.raises(MigrationFailed, match=rf"waiting 0.5s for a lock held by .*pid {pid}, 'app-report'"):
            deploy(database_url, mdir, statement_lock_timeout=0.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    r = cli("--json", "migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["applied"] == [NAME]
    assert "note" in _columns(database_url)
    runs = [x for x in ledger(database_url) if x["migration_name"] == NAME]
    assert len(runs) == 3 and all(x["rolled_back_at"] is not None for x in runs[:2])
    assert runs[2]["finished_at"] is not None and runs[2]["rolled_back_at"] is None
    assert status(database_url, mdir).ok


def test_a_script_outside_a_transaction_also_gives_up_and_names_the_blocker(tmp_path, database_url):
    """CREATE INDEX CONCURRENTLY cannot run in a transaction: it fails after the timeout too, recorded as failed
    (a script outside a transaction may have changed something: resolve decides)."""
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)
    write_migrations(mdir, {"001_idx": 'CREATE INDEX CONCURRENTLY "Project_owner_idx" ON "Project"("ownerId");\n'})
    with connect(database_url) as holder:
        holder.execute("SET application_name = 'app-migrator-by-hand'")
        holder.execute("BEGIN")
        holder.execute('LOCK TABLE "Project" IN ACCESS EXCLUSIVE MODE')
        pid = holder.info.backend_pid
        blocker = rf"waiting 0.5s for a lock held by .*pid {pid}, 'app-migrator-by-hand'"
        with pytest.raises(MigrationFailed, match=blocker) as e:
            deploy(database_url, mdir, statement_lock_timeout=0.5)
        assert "resolve --applied 001_idx" in e.value.hint and "Fix the script or the data" not in e.value.hint
        holder.execute("ROLLBACK")
    assert status(database_url, mdir).names("failed") == ["001_idx"]
