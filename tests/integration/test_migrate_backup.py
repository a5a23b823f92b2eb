"""`migrate deploy --backup` and `--allow-destructive` take a real backup first (Postgres + SeaweedFS)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import state_tmpdir
from tests.integration.test_backup import Env


def _migrations(root: Path, items: dict[str, str]) -> Path:
    d = root / "migrations"
    d.mkdir(exist_ok=True)
    (d / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for name, sql in items.items():
        (d / name).mkdir(exist_ok=True)
        (d / name / "migration.sql").write_text(sql)
    return d


def _backups(e: Env) -> list[dict]:
    r = e.cli("--json", "backup", "list")
    assert r.code == 0, r.output
    return r.json["backups"]


def test_backup_flag_takes_a_backup_only_when_something_is_pending(pg_server, s3_server):
    root = state_tmpdir("aixsss-mb-")
    e = Env(pg_server, s3_server, root)
    mdir = _migrations(root, {"001_t": 'CREATE TABLE "T" (id TEXT PRIMARY KEY);'})
    first = e.cli("--json", "migrate", "deploy", "--backup", "--migrations-dir", str(mdir))
    assert first.code == 0, first.output
    assert first.json["applied"] == ["001_t"] and first.json["backup_id"] is None  # a fresh database: nothing to keep
    assert any("no migration was ever applied" in w for w in first.json["warnings"])
    assert _backups(e) == []
    mdir = _migrations(root, {"002_u": 'CREATE TABLE "U" (id TEXT PRIMARY KEY);'})
    r = e.cli("--json", "migrate", "deploy", "--backup", "--migrations-dir", str(mdir))
    assert r.code == 0, r.output
    assert r.json["applied"] == ["002_u"] and r.json["backup_id"]
    listed = _backups(e)
    assert [b["id"] for b in listed] == [r.json["backup_id"]]
    assert listed[0]["status"] == "complete" and listed[0]["label"] == "pre-migrate 002_u"
    assert listed[0]["objects"] is not None  # the store answers: a full restore point
    again = e.cli("--json", "migrate", "deploy", "--backup", "--migrations-dir", str(mdir))
    assert again.code == 0 and again.json["applied"] == [] and again.json["backup_id"] is None
    assert len(_backups(e)) == 1


def test_without_an_object_store_the_pre_migration_backup_is_the_database_alone(pg_server, s3_server):
    from tests.conftest import free_port

    root = state_tmpdir("aixsss-mb-")
    e = Env(pg_server, s3_server, root)
    e.env["S3_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there (as on a CI service database)
    assert e.cli("migrate", "deploy", "--migrations-dir",
                 str(_migrations(root, {"001_t": 'CREATE TABLE "T" (id TEXT PRIMARY KEY);'}))).code == 0
    mdir = _migrations(root, {"002_u": 'CREATE TABLE "U" (id TEXT PRIMARY KEY);'})
    r = e.cli("--json", "migrate", "deploy", "--backup", "--migrations-dir", str(mdir))
    assert r.code == 0, r.output
    assert r.json["applied"] == ["002_u"] and r.json["backup_id"]
    assert any("database-only pre-migration backup" in w for w in r.json["warnings"])
    assert [b["objects"] for b in _backups(e)] == [None]


def test_allow_destructive_always_backs_up_first(pg_server, s3_server):
    root = state_tmpdir("aixsss-md-")
    e = Env(pg_server, s3_server, root)
    mdir = _migrations(root, {"001_t": 'CREATE TABLE "T" (id TEXT PRIMARY KEY, note TEXT);'})
    assert e.cli("migrate", "deploy", "--migrations-dir", str(mdir)).code == 0
    assert _backups(e) == []
    mdir = _migrations(root, {"002_drop": 'ALTER TABLE "T" DROP COLUMN note;'})
    refused = e.cli("migrate", "deploy", "--migrations-dir", str(mdir))
    assert refused.code == 3 and _backups(e) == []
    r = e.cli("--json", "migrate", "deploy", "--allow-destructive", "--migrations-dir", str(mdir))
    assert r.code == 0, r.output
    assert r.json["applied"] == ["002_drop"]
    assert [b["id"] for b in _backups(e)] == [r.json["backup_id"]]
