"""`aixsss-ops migrate` against a real PostgreSQL: the Prisma ledger, lock, drift, failures, recovery."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pytest

from aixsss_ops.errors import CheckFailed, ServiceUnavailable
from aixsss_ops.migrate import baseline, deploy, resolve_applied, resolve_rolled_back, status
from aixsss_ops.migrate.apply import MigrationFailed
from aixsss_ops.migrate.lock import LOCK_KEY, LockTimeout
from tests.integration.migrate_helpers import CLI, cli, cli_json, connect, ledger, poll, tables, write_migrations

INIT = """-- CreateTable
CREATE TABLE "User" ("id" TEXT NOT NULL, "email" TEXT NOT NULL, CONSTRAINT "User_pkey" PRIMARY KEY ("id"));
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");
"""
PROJECT = """CREATE TABLE "Project" ("id" TEXT NOT NULL PRIMARY KEY, "ownerId" TEXT NOT NULL REFERENCES "User"("id"));
INSERT INTO "User" VALUES ('u1', 'a@example.com');
"""
SCENE = 'CREATE TABLE "Scene" ("id" TEXT PRIMARY KEY, "projectId" TEXT NOT NULL, "body" JSONB);\n'

THREE = {"000_init": INIT, "001_project": PROJECT, "20240101000000_scene": SCENE}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_fresh_deploy_applies_in_order_and_records_like_prisma(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    result = deploy(database_url, mdir)
    assert result.applied == ["000_init", "001_project", "20240101000000_scene"]
    assert result.created_ledger
    assert {"User", "Project", "Scene", "_prisma_migrations"} <= tables(database_url)
    rows = ledger(database_url)
    assert [r["migration_name"] for r in rows] == list(THREE)
    for r in rows:
        assert r["checksum"] == sha(THREE[r["migration_name"]])
        assert r["finished_at"] is not None and r["finished_at"] >= r["started_at"]
        assert r["rolled_back_at"] is None and r["logs"] is None
        assert r["applied_steps_count"] == 1
        assert len(r["id"]) == 36


def test_second_deploy_is_a_no_op(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    deploy(database_url, mdir)
    before = ledger(database_url)
    again = deploy(database_url, mdir)
    assert again.applied == [] and again.plan == []
    assert again.already_applied == list(THREE)
    assert ledger(database_url) == before
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 0 and doc["ok"] and doc["applied"] == list(THREE)


def test_only_new_migrations_are_applied_later(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)
    write_migrations(mdir, {"001_project": PROJECT})
    assert deploy(database_url, mdir).applied == ["001_project"]


def test_drift_after_editing_an_applied_file(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    deploy(database_url, mdir)
    # CRLF line endings (a Windows checkout) are not drift, as in Prisma
    p = mdir / "000_init" / "migration.sql"
    p.write_bytes(INIT.replace("\n", "\r\n").encode())
    assert status(database_url, mdir).ok
    # a real edit is
    p.write_text(INIT + "-- edited\nCREATE INDEX x ON \"User\"(id);\n")
    write_migrations(mdir, {"20250101000000_more": 'CREATE TABLE "More" (id int);'})
    report = status(database_url, mdir)
    assert report.names("modified") == ["000_init"] and not report.ok
    r = cli("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 3 and "modified" in r.stdout
    with pytest.raises(CheckFailed, match="000_init was modified after it was applied"):
        deploy(database_url, mdir)
    assert "More" not in tables(database_url)
    r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 3 and "--allow-drift" in r.stderr
    result = deploy(database_url, mdir, allow_drift=True)
    assert result.applied == ["20250101000000_more"] and result.drift == ["000_init"]


def test_failed_migration_rolls_back_stops_and_is_resolved(tmp_path, database_url):
    bad = 'CREATE TABLE "Half" (id int);\nINSERT INTO "Nope" VALUES (1);\n'
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT, "001_bad": bad, "002_after": SCENE})
    r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 1
    assert 'migration 001_bad failed at line 2: relation "Nope" does not exist (SQLSTATE 42P01)' in r.stderr
    assert 'INSERT INTO "Nope"' in r.stderr
    assert "Half" not in tables(database_url)  # its transaction rolled back
    assert "Scene" not in tables(database_url)  # later migrations not attempted
    rows = {r["migration_name"]: r for r in ledger(database_url)}
    assert rows["000_init"]["finished_at"] is not None
    failed = rows["001_bad"]
    assert failed["finished_at"] is None and failed["rolled_back_at"] is None
    assert 'relation "Nope" does not exist' in failed["logs"] and "42P01" in failed["logs"]
    assert "002_after" not in rows

    report = status(database_url, mdir)
    assert report.names("failed") == ["001_bad"] and report.names("pending") == ["002_after"]
    # deploy refuses while the failure is recorded, naming the command that resolves it
    with pytest.raises(CheckFailed, match=r"aixsss-ops migrate resolve --rolled-back 001_bad"):
        deploy(database_url, mdir)
    r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 3 and "migrate resolve --rolled-back 001_bad" in r.stderr

    # fix the script, mark the failed run rolled back, deploy again
    (mdir / "001_bad" / "migration.sql").write_text('CREATE TABLE "Half" (id int);\n')
    r = cli("migrate", "resolve", "--rolled-back", "001_bad", "--database-url", database_url)
    assert r.returncode == 0, r.stderr
    with pytest.raises(CheckFailed, match="not in a failed state"):
        resolve_rolled_back(database_url, "001_bad")
    assert deploy(database_url, mdir).applied == ["001_bad", "002_after"]
    runs = [r for r in ledger(database_url) if r["migration_name"] == "001_bad"]
    assert len(runs) == 2  # the failed row is kept, never deleted
    assert runs[0]["rolled_back_at"] is not None and runs[0]["finished_at"] is None
    assert runs[1]["finished_at"] is not None and runs[1]["checksum"] == sha('CREATE TABLE "Half" (id int);\n')
    assert status(database_url, mdir).ok


def test_resolve_applied_records_a_new_row_for_a_hand_completed_migration(tmp_path, database_url):
    bad = 'CREATE TABLE "H" (x int);\nINSERT INTO "H" VALUES (1);\nUPDATE "H" SET x = 1 / (x - 1);\n'
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT, "001_bad": bad})
    # a run-time error carries no position: the failing statement is found from the results received
    with pytest.raises(MigrationFailed, match=r'failed at line 3: division by zero .*: UPDATE "H" SET'):
        deploy(database_url, mdir)
    result = resolve_applied(database_url, mdir, "001_bad")
    runs = [r for r in ledger(database_url) if r["migration_name"] == "001_bad"]
    assert len(runs) == 2 and result.rolled_back_rows == [runs[0]["id"]] and result.new_rows == [runs[1]["id"]]
    assert runs[0]["rolled_back_at"] is not None
    assert runs[1]["finished_at"] is not None and runs[1]["logs"] == "" and runs[1]["applied_steps_count"] == 0
    assert status(database_url, mdir).ok
    with pytest.raises(CheckFailed, match="already recorded as applied"):
        resolve_applied(database_url, mdir, "001_bad")


PRISMA_DDL = """CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
)"""

LEDGER_COLUMNS_SQL = """
SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = '_prisma_migrations'
ORDER BY ordinal_position"""


def test_ledger_has_exactly_prismas_columns_and_types(tmp_path, database_url, pg_server):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)
    with connect(database_url) as c:
        ours = c.execute(LEDGER_COLUMNS_SQL).fetchall()
        pk = c.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
            "WHERE i.indrelid = '_prisma_migrations'::regclass AND i.indisprimary"
        ).fetchall()
    assert ours == [
        ("id", "character varying", 36, "NO", None),
        ("checksum", "character varying", 64, "NO", None),
        ("finished_at", "timestamp with time zone", None, "YES", None),
        ("migration_name", "character varying", 255, "NO", None),
        ("logs", "text", None, "YES", None),
        ("rolled_back_at", "timestamp with time zone", None, "YES", None),
        ("started_at", "timestamp with time zone", None, "NO", "now()"),
        ("applied_steps_count", "integer", None, "NO", "0"),
    ]
    assert pk == [("id",)]
    # and it is the very table Prisma's engine creates
    other = pg_server.url(pg_server.create_database())
    with connect(other) as c:
        c.execute(PRISMA_DDL)
        assert c.execute(LEDGER_COLUMNS_SQL).fetchall() == ours


def test_ledger_prefilled_by_prisma_is_taken_over_without_reapplying(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    # the database as `prisma migrate deploy` leaves it: schema applied, rows with Prisma's values;
    # one checksum taken on a Windows checkout (CRLF), as Prisma would have written it there
    with connect(database_url) as c:
        c.execute(PRISMA_DDL)
        for i, name in enumerate(["000_init", "001_project"]):
            c.execute(THREE[name])
            script = THREE[name] if i else THREE[name].replace("\n", "\r\n")
            c.execute(
                "INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name) VALUES (%s, %s, now(), %s)",
                (f"6f1c0c6e-0000-4000-8000-00000000000{i}", sha(script), name),
            )
            c.execute("UPDATE _prisma_migrations SET applied_steps_count = applied_steps_count + 1, "
                      "finished_at = now() WHERE migration_name = %s", (name,))
    report = status(database_url, mdir)
    assert report.names("applied") == ["000_init", "001_project"] and report.names("pending") == ["20240101000000_scene"]
    result = deploy(database_url, mdir)  # would fail on "User" already existing if it re-applied
    assert result.applied == ["20240101000000_scene"] and not result.created_ledger
    assert len(ledger(database_url)) == 3


def test_four_concurrent_deploy_processes_apply_each_migration_once(tmp_path, database_url):
    migrations = {
        f"{i:03d}_step": f'CREATE TABLE "T{i}" (id int);\nINSERT INTO "Runs" VALUES ({i});\nSELECT pg_sleep(0.05);\n'
        for i in range(1, 13)
    }
    migrations["000_runs"] = 'CREATE TABLE "Runs" (n int);\n'
    mdir = write_migrations(tmp_path / "m", migrations)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    procs = [
        subprocess.Popen([CLI, "--json", "migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1] for o in outs]
    applied = [json.loads(o[0])["applied"] for o in outs]
    assert sorted(n for a in applied for n in a) == sorted(migrations)  # each applied by exactly one process
    rows = ledger(database_url)
    assert sorted(r["migration_name"] for r in rows) == sorted(migrations)
    with connect(database_url) as c:
        assert sorted(r[0] for r in c.execute('SELECT n FROM "Runs"')) == list(range(1, 13))


def test_a_second_runner_waits_then_names_the_lock_holder(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    with connect(database_url) as holder:
        holder.execute("SET application_name = 'prisma-migrate-elsewhere'")
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        t0 = time.monotonic()
        with pytest.raises(LockTimeout, match=r"held by pid \d+, 'prisma-migrate-elsewhere'"):
            deploy(database_url, mdir, lock_timeout=1.0)
        assert 0.9 < time.monotonic() - t0 < 10
        assert "User" not in tables(database_url)
        report = status(database_url, mdir)
        assert "prisma-migrate-elsewhere" in report.lock_holder
        r = cli("migrate", "deploy", "--lock-timeout", "0.5", "--migrations-dir", str(mdir), "--database-url", database_url)
        assert r.returncode == 1 and "prisma-migrate-elsewhere" in r.stderr
        # once released, a waiting runner proceeds
        waiter = subprocess.Popen([CLI, "migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        said = waiter.stderr.readline()  # its first word: waiting, however long its start-up took
        assert "waiting up to 60s for the migration lock held by pid" in said
        assert waiter.poll() is None  # still waiting
        holder.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
        out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, said + err
    assert "applying 000_init" in err
    assert "User" in tables(database_url)


def test_sigkill_during_deploy_leaves_a_truthful_state_and_deploy_continues(tmp_path, database_url):
    slow = 'CREATE TABLE "Slow" (id int);\nSELECT pg_sleep(4);\n'
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT, "001_slow": slow, "002_after": SCENE})
    p = subprocess.Popen([CLI, "migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def started():
        try:
            return any(r["migration_name"] == "001_slow" for r in ledger(database_url))
        except Exception:
            return False

    poll(started, timeout=30, what="001_slow to start")
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    # the server notices the dead client (client_connection_check_interval), rolls back, frees the lock
    poll(lambda: status(database_url, mdir).lock_holder is None, timeout=15, what="the lock to be released")
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 3
    assert doc["applied"] == ["000_init"] and doc["interrupted"] == ["001_slow"] and doc["pending"] == ["002_after"]
    assert "Slow" not in tables(database_url)  # nothing half-applied
    rows = [r for r in ledger(database_url) if r["migration_name"] == "001_slow"]
    assert len(rows) == 1 and rows[0]["finished_at"] is None  # never a half-recorded success
    result = deploy(database_url, mdir)
    assert result.applied == ["001_slow", "002_after"] and result.retried == ["001_slow"]
    runs = [r for r in ledger(database_url) if r["migration_name"] == "001_slow"]
    assert runs[0]["rolled_back_at"] is not None and runs[1]["finished_at"] is not None
    assert status(database_url, mdir).ok


def test_killed_non_transactional_migration_asks_for_resolve(tmp_path, database_url):
    """A script with its own COMMIT cannot be retried blindly: status says failed, deploy asks for resolve."""
    script = 'BEGIN;\nCREATE TABLE "Tx" (id int);\nCOMMIT;\nSELECT pg_sleep(4);\n'
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT, "001_own_tx": script})
    p = subprocess.Popen([CLI, "migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll(lambda: "Tx" in tables(database_url), timeout=30, what="the script's own commit")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    poll(lambda: status(database_url, mdir).lock_holder is None, timeout=15, what="the lock to be released")
    assert status(database_url, mdir).names("failed") == ["001_own_tx"]
    with pytest.raises(CheckFailed, match="resolve --applied 001_own_tx"):
        deploy(database_url, mdir)


def test_non_empty_unmanaged_database_needs_baseline(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    with connect(database_url) as c:  # what the first two migrations created, without any ledger
        c.execute(INIT)
        c.execute(PROJECT)
    with pytest.raises(CheckFailed, match="not empty .*migrate baseline"):
        deploy(database_url, mdir)
    assert "_prisma_migrations" not in tables(database_url)
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 3 and doc["needs_baseline"] and set(doc["unmanaged_tables"]) == {"User", "Project"}
    r = cli("migrate", "baseline", "--up-to", "001_project", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 2 and "--yes" in r.stderr  # asks, and refuses without a terminal
    r = cli("--yes", "migrate", "baseline", "--up-to", "001_project", "--migrations-dir", str(mdir),
            "--database-url", database_url)
    assert r.returncode == 0, r.stderr
    rows = ledger(database_url)
    assert [r["migration_name"] for r in rows] == ["000_init", "001_project"]
    assert all(r["applied_steps_count"] == 0 and r["finished_at"] for r in rows)
    assert deploy(database_url, mdir).applied == ["20240101000000_scene"]
    with pytest.raises(CheckFailed, match="already has a migration history"):
        baseline(database_url, mdir)


def test_destructive_pending_migrations_need_allow_destructive(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)
    write_migrations(mdir, {"001_drop": 'ALTER TABLE "User" DROP COLUMN "email";\n'})
    code, doc = cli_json("migrate", "deploy", "--dry-run", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 3 and doc["plan"] == ["001_drop"] and doc["dry_run"]
    assert [f["rule"] for f in doc["findings"]] == ["drop-column"]
    with pytest.raises(CheckFailed, match="would break the running color or lose data"):
        deploy(database_url, mdir)
    with connect(database_url) as c:  # nothing changed by the refusal or the dry run
        assert c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = 'User'").fetchone()[0] == 2
    assert deploy(database_url, mdir, allow_destructive=True).applied == ["001_drop"]


CREATE_EPISODE = 'CREATE TABLE "Episode" ("id" TEXT NOT NULL PRIMARY KEY, "n" TEXT, "title" TEXT, "note" TEXT);\n'
CHANGE_EPISODE = """ALTER TABLE "Episode" ALTER COLUMN "n" SET DATA TYPE INTEGER USING "n"::integer;
ALTER TABLE "Episode" RENAME COLUMN "title" TO "name";
ALTER TABLE "Episode" ALTER COLUMN "note" SET NOT NULL;
"""


def _columns(url: str, table: str) -> dict[str, tuple[str, str]]:
    with connect(url) as c:
        return {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = %s", (table,))}


def test_empty_database_deploys_a_batch_whose_lint_findings_are_notes(tmp_path, database_url):
    """On a database no migration was applied to, nothing runs on the schema: a later migration changing what an
    earlier one of the same batch created (a type change, a rename, SET NOT NULL) is no reason to refuse."""
    mdir = write_migrations(tmp_path / "m", {
        "000_episode": CREATE_EPISODE,
        "001_reshape": CHANGE_EPISODE + 'DROP TABLE IF EXISTS "Legacy";\n',
    })
    code, doc = cli_json("migrate", "deploy", "--dry-run", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 0 and doc["ok"] and doc["blockers"] == [], doc
    assert [(f["rule"], f["severity"]) for f in doc["findings"]] == [
        ("type-change", "info"), ("rename", "info"), ("not-null", "info"), ("drop-table", "info")]
    r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 0, r.stderr
    assert "info: [rename]" in r.stdout and "would break the running color" not in r.stdout + r.stderr
    assert [row["migration_name"] for row in ledger(database_url) if row["finished_at"]] == ["000_episode", "001_reshape"]
    assert _columns(database_url, "Episode") == {
        "id": ("text", "NO"), "n": ("integer", "YES"), "name": ("text", "YES"), "note": ("text", "NO")}


def test_a_pending_batch_may_reshape_what_it_creates_but_not_what_the_running_color_uses(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    deploy(database_url, mdir)  # the running color now uses "User"
    write_migrations(mdir, {"001_episode": CREATE_EPISODE, "002_reshape": CHANGE_EPISODE})
    result = deploy(database_url, mdir)
    assert result.applied == ["001_episode", "002_reshape"]
    assert {f.severity for f in result.findings} == {"info"} and len(result.findings) == 3
    assert _columns(database_url, "Episode")["note"] == ("text", "NO")
    # the same statements on a table that existed before the batch still stop the deploy
    write_migrations(mdir, {"003_user": 'ALTER TABLE "User" ALTER COLUMN "email" SET DATA TYPE VARCHAR(80);\n'})
    with pytest.raises(CheckFailed, match=r"would break the running color .*003_user line 1: type-change"):
        deploy(database_url, mdir)


def test_failed_migration_from_another_release_names_the_folder_it_ran_from(tmp_path, database_url):
    """The `resolve --applied … --migrations-dir` hint names the folder that holds the failed migration (the release
    it ran from), not the folder of the deploy that finds it failed."""
    bad = 'CREATE INDEX CONCURRENTLY "Nope_x_idx" ON "Nope"("x");\n'  # not in a transaction: needs resolve
    release_a = write_migrations(tmp_path / "releases" / "a" / "migrations", {"000_init": INIT, "001_index": bad})
    with pytest.raises(MigrationFailed) as e:
        deploy(database_url, release_a)
    assert f"resolve --applied 001_index --migrations-dir {release_a}`" in e.value.hint
    failed = [r for r in ledger(database_url) if r["migration_name"] == "001_index"][0]
    assert failed["logs"].splitlines()[-1] == f"Migrations folder: {release_a}"

    # the next deploy comes from another release, which does not have 001_index
    release_b = write_migrations(tmp_path / "releases" / "b" / "migrations", {"000_init": INIT, "002_scene": SCENE})
    r = cli("migrate", "deploy", "--migrations-dir", str(release_b), "--database-url", database_url)
    assert r.returncode == 3
    assert f"resolve --applied 001_index --migrations-dir {release_a}`" in " ".join(r.stderr.split())
    # the hint works as given
    r = cli("migrate", "resolve", "--applied", "001_index", "--migrations-dir", str(release_a), "--database-url",
            database_url)
    assert r.returncode == 0, r.stderr
    assert deploy(database_url, release_b).applied == ["002_scene"]

    # once the folder it ran from is gone: this run's folder when it holds the migration, else no folder is named
    with connect(database_url) as c:
        c.execute("""UPDATE _prisma_migrations SET finished_at = NULL, logs = %s WHERE migration_name = '001_index'""",
                  (f"ERROR: x\n\nMigrations folder: {tmp_path / 'gone'}",))
    release_c = write_migrations(tmp_path / "releases" / "c" / "migrations", {"000_init": INIT, "001_index": bad})
    with pytest.raises(CheckFailed, match=rf"--applied 001_index --migrations-dir {re.escape(str(release_c))}`"):
        deploy(database_url, release_c)
    with pytest.raises(CheckFailed, match=rf"--migrations-dir DIR` \(DIR: the migrations folder that holds 001_index; "
                                          rf"{re.escape(str(release_b))} does not\)"):
        deploy(database_url, release_b)


def test_lint_cli_reports_findings_with_exit_3(tmp_path):
    mdir = write_migrations(tmp_path / "m", {
        "000_init": INIT,
        "001_rename": 'ALTER TABLE "User" RENAME COLUMN "email" TO "mail";\nDROP TABLE "Old";\n',
        "002_fine": 'ALTER TABLE "User" ADD COLUMN "n" INTEGER;\n',
    })
    code, doc = cli_json("migrate", "lint", "--migrations-dir", str(mdir))
    assert code == 3 and not doc["ok"]
    assert [(f["migration"], f["rule"], f["line"]) for f in doc["findings"]] == [
        ("001_rename", "rename", 1), ("001_rename", "drop-table", 2)]
    code, doc = cli_json("migrate", "lint", "002_fine", "--migrations-dir", str(mdir))
    assert code == 0 and doc["findings"] == []


def test_bad_folders_are_clear_errors_and_apply_nothing(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    (mdir / "001_empty_folder").mkdir()
    r = cli("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert r.returncode == 2 and "001_empty_folder: no migration.sql" in r.stderr
    other = write_migrations(tmp_path / "mysql", {"000_init": INIT}, lock=False)
    (other / "migration_lock.toml").write_text('provider = "mysql"\n')
    r = cli("migrate", "deploy", "--migrations-dir", str(other), "--database-url", database_url)
    assert r.returncode == 2 and 'provider = "mysql"' in r.stderr
    assert tables(database_url) == set()


def test_database_down_is_one_line_naming_the_masked_url(tmp_path):
    from tests.conftest import free_port

    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    url = f"postgresql://app:s3cretpassw0rd@127.0.0.1:{free_port()}/aixsss?schema=public"
    t0 = time.monotonic()
    r = cli("migrate", "status", "--migrations-dir", str(mdir), env={"DATABASE_URL": url})
    assert time.monotonic() - t0 < 10
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "postgresql://app:****@127.0.0.1" in lines[0] and "unreachable" in lines[0]
    assert "s3cretpassw0rd" not in r.stderr + r.stdout
    code, doc = cli_json("migrate", "deploy", "--migrations-dir", str(mdir), env={"DATABASE_URL": url})
    assert code == 1 and not doc["ok"] and "****" in doc["error"]
    with pytest.raises(ServiceUnavailable):
        deploy(url, mdir)


def test_database_url_from_the_api_env_file_and_missing_url(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    state = tmp_path / "state"
    (state / "env").mkdir(parents=True)
    (tmp_path / "ops.toml").write_text(f'state_dir = "{state}"\n')
    r = cli("migrate", "status", "--migrations-dir", str(mdir), cwd=str(tmp_path))
    assert r.returncode == 2 and "no DATABASE_URL" in r.stderr
    (state / "env" / "api.env").write_text(f"PORT=3001\nDATABASE_URL={database_url}\n")
    code, doc = cli_json("migrate", "deploy", "--migrations-dir", str(mdir), cwd=str(tmp_path))
    assert code == 0 and doc["applied"] == ["000_init"]


def test_prisma_schema_parameter_puts_the_ledger_in_that_schema(tmp_path, pg_server):
    url = pg_server.url(pg_server.create_database(), schema="aixsss")
    mdir = write_migrations(tmp_path / "m", {"000_init": INIT})
    assert deploy(url, mdir).applied == ["000_init"]
    with connect(url) as c:
        got = c.execute("SELECT table_schema, table_name FROM information_schema.tables "
                        "WHERE table_name IN ('_prisma_migrations', 'User') ORDER BY 2").fetchall()
    assert got == [("aixsss", "User"), ("aixsss", "_prisma_migrations")]


def test_status_json_and_exit_codes(tmp_path, database_url):
    mdir = write_migrations(tmp_path / "m", THREE)
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 3 and doc["pending"] == list(THREE) and not doc["ledger_exists"]
    code, doc = cli_json("migrate", "deploy", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 0 and doc["applied"] == list(THREE)
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 0 and doc["counts"]["applied"] == 3
    # a migration recorded in the database but gone from the folder
    (mdir / "20240101000000_scene" / "migration.sql").unlink()
    (mdir / "20240101000000_scene").rmdir()
    code, doc = cli_json("migrate", "status", "--migrations-dir", str(mdir), "--database-url", database_url)
    assert code == 3 and doc["missing"] == ["20240101000000_scene"]


def test_create_cli(tmp_path):
    mdir = tmp_path / "m"
    code, doc = cli_json("migrate", "create", "add scene notes", "--migrations-dir", str(mdir))
    assert code == 0 and doc["migration"].endswith("_add_scene_notes")
    assert (mdir / doc["migration"] / "migration.sql").read_text() == ""
    r = cli("migrate", "create", "x", "--migrations-dir", str(mdir), env={"NODE_ENV": "production"})
    assert r.returncode == 2 and "production" in r.stderr
