"""backup create / list / verify / restore / prune against real PostgreSQL and SeaweedFS, through the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from tests.cli import EXE, REPO, run_cli
from tests.conftest import stack_config, state_tmpdir
from tests.integration.backup_helpers import (
    mutate_db,
    mutate_objects,
    objects_state,
    seed,
    seed_objects,
    table_dump,
)

OLD_KEY = "b2xkLWtleS1vbGQta2V5LW9sZC1rZXktb2xkLWtleS0="
NEW_KEY = "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleS0="


class Env:
    def __init__(self, pg_server, s3_server, tmp: Path, **backup):
        self.pg = pg_server
        self.s3 = s3_server
        self.db = pg_server.create_database()
        self.url = pg_server.url(self.db)
        self.bucket = s3_server.new_bucket(versioned=False)
        self.client = s3_server.target().client()
        self.dir = tmp / "backups"
        self.config = stack_config(tmp, backup={"dir": str(self.dir), **backup})
        self.env = {
            "DATABASE_URL": self.url, "S3_ENDPOINT": s3_server.endpoint, "S3_ACCESS_KEY": s3_server.access_key,
            "S3_SECRET_KEY": s3_server.secret_key, "S3_BUCKET": self.bucket, "API_KEY_ENCRYPTION_KEY": OLD_KEY,
        }

    def cli(self, *args, env=None, **kw):
        return run_cli(*args, config=self.config, env={**self.env, **(env or {})}, **kw)

    def create(self, *args, env=None):
        r = self.cli("--json", "backup", "create", *args, env=env)
        assert r.code == 0, r.output
        return r.json


@pytest.fixture
def env(pg_server, s3_server):
    return Env(pg_server, s3_server, state_tmpdir("aixsss-bk-"))


def _old_key_bytes():
    from aixsss_ops.crypto import derive_key

    return derive_key(OLD_KEY)


def test_round_trip_restores_every_row_and_object(env):
    seed(env.url, key=_old_key_bytes())
    seed_objects(env.client, env.bucket)
    r = env.cli("--json", "backup", "create", "--label", "before-mutation")
    assert r.code == 0, r.output
    created = r.json
    assert "enabled versioning" in " ".join(created["actions"])
    rows_at_t, objs_at_t = table_dump(env.url), objects_state(env.client, env.bucket)

    mutate_db(env.url)
    mutate_objects(env.client, env.bucket)
    assert table_dump(env.url) != rows_at_t and objects_state(env.client, env.bucket) != objs_at_t

    listed = env.cli("--json", "backup", "list")
    assert listed.code == 0 and [b["id"] for b in listed.json] == [created["id"]]
    assert listed.json[0]["status"] == "complete" and listed.json[0]["label"] == "before-mutation"

    # without --yes and without a TTY a live restore refuses (exit 2) and changes nothing
    refused = env.cli("restore", created["id"])
    assert refused.code == 2, refused.output
    assert objects_state(env.client, env.bucket) != objs_at_t

    r = env.cli("--json", "--yes", "restore", created["id"])
    assert r.code == 0, r.output
    res = r.json
    assert res["objects"]["copied"] == 2 + 1 and res["objects"]["delete_markers"] == 1
    assert table_dump(env.url) == rows_at_t
    assert objects_state(env.client, env.bucket) == objs_at_t
    prev = res["database"]["previous"]
    assert prev and table_dump(env.pg.url(prev)) != rows_at_t  # the pre-restore database is kept for undo

    # a second restore finds everything matching: objects skipped, no version deleted
    versions_before = sum(1 for _ in env.client.list_objects(env.bucket, include_version=True, recursive=True))
    r2 = env.cli("--json", "--yes", "restore", created["id"], "--objects-only")
    assert r2.code == 0, r2.output
    assert r2.json["objects"]["copied"] == 0 and r2.json["objects"]["delete_markers"] == 0
    versions_after = sum(1 for _ in env.client.list_objects(env.bucket, include_version=True, recursive=True))
    assert versions_after == versions_before


def test_unknown_id_is_a_usage_error(env):
    r = env.cli("backup", "verify", "20990101T000000Z-dead")
    assert r.code == 2 and "unknown backup id" in r.stderr


def _big_table(url: str, rows: int) -> None:
    with psycopg.connect(url.split("?")[0], autocommit=True) as c:
        c.execute(f"CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat(md5(random()::text), 8) AS payload "
                  f"FROM generate_series(1, {rows}) g")


def test_sigkill_during_create_leaves_nothing_complete_and_next_run_cleans(env):
    seed(env.url)
    _big_table(env.url, 600_000)
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    e.update(env.env, NO_COLOR="1")
    proc = subprocess.Popen([EXE, "--config", str(env.config), "backup", "create", "--jobs", "1"], env=e, cwd=str(REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial = None
    while time.monotonic() < deadline:
        parts = list(env.dir.glob("*.partial")) if env.dir.exists() else []
        if parts and any(f.name.endswith(".dat.gz") for f in (parts[0] / "db").glob("*")):
            partial = parts[0]
            break
        assert proc.poll() is None, "backup finished before it could be killed: make the table bigger"
        time.sleep(0.02)
    assert partial is not None, "no partial backup appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    listed = env.cli("--json", "backup", "list")
    assert listed.code == 0, listed.output
    assert [b["status"] for b in listed.json] == ["incomplete"]
    assert env.cli("backup", "verify", "latest").code == 2  # nothing complete to verify
    assert env.cli("backup", "verify", listed.json[0]["id"]).code == 3  # named, but not complete

    # pg_dump died with its parent (PR_SET_PDEATHSIG): nothing keeps writing into the remains
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ps = subprocess.run(["pgrep", "-f", f"pg_dump.*{partial.name}"], capture_output=True, text=True).stdout
        if not ps.strip():
            break
        time.sleep(0.1)
    assert not ps.strip(), "pg_dump outlived the killed backup"

    done = env.create("--no-objects")
    assert done["cleaned"] == [partial.name] and not partial.exists()
    assert [b["status"] for b in env.cli("--json", "backup", "list").json] == ["complete"]


def test_tampered_file_is_detected_and_restore_refuses(env):
    seed(env.url)
    b = env.create("--no-objects")
    assert env.cli("backup", "verify", b["id"]).code == 0
    dat = sorted((env.dir / b["id"] / "db").glob("*.dat.gz"), key=lambda p: p.stat().st_size)[-1]
    raw = bytearray(dat.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    dat.write_bytes(bytes(raw))
    r = env.cli("backup", "verify", b["id"])
    assert r.code == 3 and f"db/{dat.name}" in r.stderr, r.output
    j = env.cli("--json", "backup", "verify", b["id"])
    assert j.code == 3 and j.json["ok"] is False and any(dat.name in p for p in j.json["problems"])
    r = env.cli("--yes", "restore", b["id"], "--target-db", "never_created")
    assert r.code == 3 and dat.name in r.stderr
    assert env.cli("--json", "backup", "list").json[0]["last_verify_ok"] is False
    # a file planted in the dump is named too
    (env.dir / b["id"] / "db" / "9999.dat.gz").write_bytes(b"x")
    assert "9999.dat.gz" in env.cli("backup", "verify", b["id"]).stderr


def test_verify_restore_proves_the_backup_and_names_a_missing_object_version(env):
    seed(env.url)
    seed_objects(env.client, env.bucket, n=5)
    b = env.create()
    r = env.cli("--json", "backup", "verify", b["id"], "--restore")
    assert r.code == 0, r.output
    assert r.json["tables_compared"] == 5 and r.json["objects_checked"] == 5
    methods = {n: t["method"] for n, t in json.loads((env.dir / b["id"] / "manifest.json").read_text())["tables"].items()}
    # json/point have no value hash and an enum hashes its OID: such columns are hashed by their text form
    assert set(methods.values()) == {"record"}
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'aixsss_verify_%'").fetchall()
    assert env.cli("--json", "backup", "list").json[0]["last_verify_ok"] is True

    snap = json.loads((env.dir / b["id"] / "objects.json").read_text())
    victim = snap["objects"][0]
    env.client.remove_object(env.bucket, victim["key"], version_id=victim["version_id"])  # someone deletes a version
    r = env.cli("backup", "verify", b["id"], "--restore")
    assert r.code == 3 and victim["key"] in r.stderr and victim["version_id"] in r.stderr, r.output
    r = env.cli("--yes", "restore", b["id"], "--objects-only")
    assert r.code == 3 and victim["key"] in r.stderr


def test_encrypted_backup_restores_only_with_its_key(env):
    seed(env.url)
    rows = table_dump(env.url)
    key = {"AIXSSS_BACKUP_ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef-backup"}
    r = env.cli("--json", "backup", "create", "--encrypt", "--no-objects")
    assert r.code == 2 and "AIXSSS_BACKUP_ENCRYPTION_KEY" in r.stderr  # no key, no backup
    b = env.create("--encrypt", "--no-objects", env=key)
    files = list((env.dir / b["id"]).rglob("*"))
    assert any(f.name == "toc.dat.enc" for f in files) and not any(f.name == "toc.dat" for f in files)
    assert not any(key["AIXSSS_BACKUP_ENCRYPTION_KEY"] in f.read_text(errors="ignore") for f in files if f.is_file())
    assert b"team" not in b"".join(f.read_bytes() for f in files if f.is_file() and f.name != "manifest.json")

    assert env.cli("backup", "verify", b["id"], "--restore").code == 2  # key missing
    wrong = env.cli("backup", "verify", b["id"], "--restore",
                    env={"AIXSSS_BACKUP_ENCRYPTION_KEY": "another-key-another-key-another-key!!"})
    assert wrong.code == 3 and "wrong encryption key" in wrong.stderr
    ok = env.cli("--json", "backup", "verify", b["id"], "--restore", env=key)
    assert ok.code == 0, ok.output
    r = env.cli("--json", "restore", b["id"], "--target-db", "enc_restored", env=key)
    assert r.code == 0, r.output
    assert table_dump(env.pg.url("enc_restored")) == rows


def test_dump_restores_with_stock_pg_restore_alone(env, pg_server):
    from aixsss_ops import sysbin

    seed(env.url)
    rows = table_dump(env.url)
    b = env.create("--no-objects")
    db = pg_server.create_database()
    r = subprocess.run([sysbin.find("pg_restore"), "--exit-on-error", "-d", pg_server.url(db, schema=None),
                        str(env.dir / b["id"] / "db")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert table_dump(pg_server.url(db)) == rows


def test_restore_reencrypts_provider_keys_written_with_the_old_key(env):
    from aixsss_ops.crypto import decrypt, derive_key

    seed(env.url, key=_old_key_bytes())
    b = env.create("--no-objects")  # API_KEY_ENCRYPTION_KEY = OLD_KEY at backup time
    rotated = {"API_KEY_ENCRYPTION_KEY": NEW_KEY}
    r = env.cli("--yes", "restore", b["id"], "--target-db", "rk_refused", env=rotated)
    assert r.code == 3 and "--old-key" in r.output and "API_KEY_ENCRYPTION_KEY_PREVIOUS" in r.output
    assert OLD_KEY not in r.output and NEW_KEY not in r.output
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'rk_refused%'").fetchall()
    bad = env.cli("--yes", "restore", b["id"], "--target-db", "rk_bad", "--old-key", "x" * 40, env=rotated)
    assert bad.code == 3 and "not the backup's key" in bad.stderr

    r = env.cli("--json", "--yes", "restore", b["id"], "--target-db", "rk_ok", "--old-key", OLD_KEY, env=rotated)
    assert r.code == 0, r.output
    assert r.json["keys"]["reencrypted"] == 15
    assert OLD_KEY not in r.output and "sk-secret" not in r.output
    new = derive_key(NEW_KEY)
    with psycopg.connect(env.pg.url("rk_ok", schema=None)) as c:
        got = c.execute('SELECT id, "apiKeyEncrypted", "imageApiKeyEncrypted" FROM "AIProfile" ORDER BY id').fetchall()
    assert [decrypt(k, new) for _, k, _ in got] == [f"sk-secret-{i}" for i in range(10)]
    assert all(decrypt(v, new) == f"img-{i[1:]}" for i, _, v in got if v)

    # the kept previous key in the api env file works the same way
    api_env = env.config.parent / "state" / "env" / "api.env"
    api_env.parent.mkdir(parents=True, exist_ok=True)
    api_env.write_text(f"API_KEY_ENCRYPTION_KEY_PREVIOUS={OLD_KEY}\n")
    r = env.cli("--json", "restore", b["id"], "--target-db", "rk_prev", env=rotated)
    assert r.code == 0 and r.json["keys"]["reencrypted"] == 15, r.output


def test_restore_refuses_a_schema_newer_than_the_tool_unless_forced(env):
    seed(env.url, migrations=["000_init", "001_ai_job_profile", "20991231000000_from_the_future"])
    b = env.create("--no-objects")
    r = env.cli("restore", b["id"], "--target-db", "future_db")
    assert r.code == 3 and "20991231000000_from_the_future" in r.stderr
    r = env.cli("restore", b["id"], "--target-db", "future_db", "--force")
    assert r.code == 0, r.output


def test_prune_keeps_what_the_policy_says(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-bk-"), keep_last=2, keep_daily=0, keep_weekly=0)
    seed(env.url, rows=10)
    ids = [env.create("--no-objects")["id"] for _ in range(4)]
    assert env.cli("backup", "keep", ids[0]).code == 0
    dry = env.cli("--json", "backup", "prune", "--dry-run")
    assert dry.code == 0 and dry.json["delete"] == [ids[1]]
    assert env.cli("backup", "prune").code == 2  # destructive: refuses without --yes and without a TTY
    r = env.cli("--json", "--yes", "backup", "prune")
    assert r.code == 0, r.output
    assert sorted(b["id"] for b in env.cli("--json", "backup", "list").json) == sorted([ids[0], ids[2], ids[3]])
    assert not (env.dir / ids[1]).exists()


def test_lifecycle_rule_shorter_than_the_retention_is_warned_about(env):
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import LifecycleConfig, NoncurrentVersionExpiration, Rule

    seed(env.url, rows=5)
    seed_objects(env.client, env.bucket, n=2)
    env.client.set_bucket_lifecycle(env.bucket, LifecycleConfig([Rule(
        ENABLED, rule_filter=Filter(prefix=""), rule_id="short",
        noncurrent_version_expiration=NoncurrentVersionExpiration(noncurrent_days=3))]))
    r = env.cli("--json", "backup", "create")
    assert r.code == 0, r.output
    assert any("'short'" in w and "3 day(s)" in w for w in r.json["warnings"]), r.json


def test_noncurrent_version_rule_is_added_when_configured(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-bk-"), noncurrent_version_days=90)
    seed(env.url, rows=5)
    r = env.cli("--json", "backup", "create")
    assert r.code == 0, r.output
    assert any("lifecycle rule" in a for a in r.json["actions"])
    rules = env.client.get_bucket_lifecycle(env.bucket).rules
    assert [x.noncurrent_version_expiration.noncurrent_days for x in rules] == [90]


def test_table_checksums_split_into_block_ranges_add_up_to_the_whole_table(database_url):
    from aixsss_ops.backup import postgres as pgb
    from aixsss_ops.dburl import parse_database_url

    _big_table(database_url, 120_000)  # ~40 MB: several ranges of 2048 blocks
    target = parse_database_url(database_url)
    split = pgb.table_sums(target, jobs=3)["public.big"]
    assert split.method == "record"
    with target.connect() as c:
        pgb.stable_session(c)
        whole = pgb.table_sum(c, "public", "big")
        c.execute("UPDATE big SET payload = 'x' WHERE id = 99999")
        changed = pgb.table_sum(c, "public", "big")
    assert (split.rows, split.checksum) == (whole.rows, whole.checksum)
    assert changed.checksum != whole.checksum and changed.rows == whole.rows == 120_000
    after = pgb.table_sums(target, jobs=2)["public.big"]
    assert (after.rows, after.checksum) == (changed.rows, changed.checksum)


def test_without_a_database_url_or_a_stack_create_is_a_usage_error(env):
    e = {k: v for k, v in env.env.items() if k != "DATABASE_URL"}
    r = run_cli("backup", "create", "--no-objects", config=env.config, env={**e, "DATABASE_URL": ""})
    assert r.code == 2 and "--database-url" in r.stderr, r.output
    assert not (env.config.parent / "state" / "secrets").exists()
