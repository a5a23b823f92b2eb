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
    assert listed.code == 0 and [b["id"] for b in listed.json["backups"]] == [created["id"]]
    assert listed.json["backups"][0]["status"] == "complete" and listed.json["backups"][0]["label"] == "before-mutation"

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
    assert [b["status"] for b in listed.json["backups"]] == ["incomplete"]
    assert env.cli("backup", "verify", "latest").code == 2  # nothing complete to verify
    assert env.cli("backup", "verify", listed.json["backups"][0]["id"]).code == 3  # named, but not complete

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
    assert [b["status"] for b in env.cli("--json", "backup", "list").json["backups"]] == ["complete"]


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
    # a live restore too: the table-data files are checked alongside pg_restore, and the swap never happens
    live = table_dump(env.url)
    r = env.cli("--yes", "restore", b["id"])
    assert r.code == 3 and dat.name in r.stderr and "was not touched" in r.stderr, r.output
    assert table_dump(env.url) == live
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'never_created%%' OR datname LIKE %s "
                             "OR datname LIKE %s", (f"{env.db}_restoring_%", f"{env.db}_pre_restore_%")).fetchall()
    assert env.cli("--json", "backup", "list").json["backups"][0]["last_verify_ok"] is False
    # a file planted in the dump is named too
    (env.dir / b["id"] / "db" / "9999.dat.gz").write_bytes(b"x")
    assert "9999.dat.gz" in env.cli("backup", "verify", b["id"]).stderr


def _no_database_like(env, pattern: str) -> bool:
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        return not c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)).fetchall()


def test_rows_altered_in_a_valid_data_file_are_caught_by_the_table_comparison(env):
    """pg_restore loads the altered file without complaint; the comparison with the manifest refuses the restore,
    and the altered file is named."""
    seed(env.url)
    b = env.create("--no-objects", env={"AIXSSS_OPS_BACKUP__COMPRESSION": "0"})
    plan = env.cli("--json", "restore", b["id"], "--target-db", "altered_rows", "--dry-run", "--checksums")
    assert plan.code == 0 and any("proven by the table comparison" in s for s in plan.json["plan"]["steps"]), plan.output
    dat = next(p for p in (env.dir / b["id"] / "db").glob("*.dat") if p.read_bytes().startswith(b"team1\t"))
    raw = dat.read_bytes()
    dat.write_bytes(raw.replace(b"\tTeam ", b"\tTean ", 1))  # same size, still valid COPY text
    for extra in ([], ["--checksums"]):  # by the SHA-256 alongside pg_restore; by the checksum comparison
        r = env.cli("--yes", "restore", b["id"], "--target-db", "altered_rows", *extra)
        assert r.code == 3 and f"db/{dat.name}: SHA-256 mismatch" in r.stderr, r.output
        assert _no_database_like(env, "altered_rows%")


def test_large_object_data_is_hashed_while_pg_restore_runs(env):
    """No table comparison covers large objects: their files are checked by their SHA-256."""
    seed(env.url)
    with psycopg.connect(env.url.split("?")[0], autocommit=True) as c:
        c.execute("SELECT lo_from_bytea(0, convert_to(repeat('large object ', 100), 'UTF8'))")
    b = env.create("--no-objects", env={"AIXSSS_OPS_BACKUP__COMPRESSION": "0"})
    blob = next((env.dir / b["id"] / "db").glob("blob_*.dat"))
    blob.write_bytes(blob.read_bytes().replace(b"large", b"LARGE", 1))
    r = env.cli("--yes", "restore", b["id"], "--target-db", "altered_blob")
    assert r.code == 3 and f"db/{blob.name}: SHA-256 mismatch" in r.stderr, r.output
    assert _no_database_like(env, "altered_blob%")
    # with a signed manifest of a plain backup, the SHA-256 is the cryptographic proof of every data file
    signed = env.create("--no-objects", env=BACKUP_KEY)
    plan = env.cli("--json", "restore", signed["id"], "--target-db", "signed", "--dry-run", env=BACKUP_KEY)
    assert plan.code == 0 and any("checking the SHA-256 of its" in s for s in plan.json["plan"]["steps"]), plan.output


def test_verify_restore_proves_the_backup_and_names_a_missing_object_version(env):
    seed(env.url)
    seed_objects(env.client, env.bucket, n=5)
    b = env.create()
    r = env.cli("--json", "backup", "verify", b["id"], "--restore")
    assert r.code == 0, r.output
    assert r.json["tables_compared"] == 5 and r.json["objects_checked"] == 5
    methods = {n: t["method"] for n, t in json.loads((env.dir / b["id"] / "manifest.json").read_text())["tables"].items()}
    # json/point have no value hash and an enum hashes its OID: such columns are hashed by their text form
    assert set(methods.values()) == {"columns"}
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'aixsss_verify_%'").fetchall()
    assert env.cli("--json", "backup", "list").json["backups"][0]["last_verify_ok"] is True

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
    assert sorted(b["id"] for b in env.cli("--json", "backup", "list").json["backups"]) == sorted([ids[0], ids[2], ids[3]])
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
    assert split.method == "columns"
    with target.connect() as c:
        pgb.stable_session(c)
        whole = pgb.table_sum(c, "public", "big")
        c.execute("UPDATE big SET payload = 'x' WHERE id = 99999")
        changed = pgb.table_sum(c, "public", "big")
    assert (split.rows, split.checksum) == (whole.rows, whole.checksum)
    assert changed.checksum != whole.checksum and changed.rows == whole.rows == 120_000
    after = pgb.table_sums(target, jobs=2)["public.big"]
    assert (after.rows, after.checksum) == (changed.rows, changed.checksum)


def test_a_backup_summed_by_an_earlier_method_restores_and_is_compared_by_it(env):
    """Backups taken before the per-column checksums record "record": a restore compares them by that method."""
    from aixsss_ops.backup import postgres as pgb
    from aixsss_ops.dburl import parse_database_url

    seed(env.url)
    b = env.create("--no-objects")
    path = env.dir / b["id"] / "manifest.json"
    manifest = json.loads(path.read_text())
    old = pgb.table_sums(parse_database_url(env.url), methods={n: "record" for n in manifest["tables"]})
    for name, t in manifest["tables"].items():
        assert t["method"] == "columns" and t["checksum"] != old[name].checksum
        t.update(method="record", checksum=old[name].checksum)
    path.write_text(json.dumps(manifest))  # unsigned (no backup key): nothing else to update
    r = env.cli("--json", "--yes", "restore", b["id"], "--target-db", "by_record", "--checksums")
    assert r.code == 0, r.output
    assert table_dump(env.pg.url("by_record")) == table_dump(env.url)
    manifest["tables"]["public.Team"]["checksum"] = str(int(old["public.Team"].checksum) + 1)
    path.write_text(json.dumps(manifest))
    r = env.cli("--yes", "restore", b["id"], "--target-db", "by_record_2", "--checksums")
    assert r.code == 3 and "table public.Team: checksum differs" in r.stderr, r.output
    # without --checksums the rows each table received are compared: a count that differs is named
    manifest["tables"]["public.Team"]["rows"] += 1
    path.write_text(json.dumps(manifest))
    r = env.cli("--yes", "restore", b["id"], "--target-db", "by_rows")
    assert r.code == 3 and "table public.Team: 20 rows after restore, 21 in the backup" in r.stderr, r.output
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'by_record_2%%' OR datname LIKE "
                             "'by_rows%%'").fetchall()


def test_restore_counts_the_rows_itself_where_the_server_keeps_no_counters(env):
    """track_counts off (here for the role pg_restore and the check connect as): the rows are counted instead."""
    seed(env.url)
    b = env.create("--no-objects")
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        c.execute("ALTER ROLE CURRENT_USER SET track_counts = off")
        try:
            r = env.cli("--json", "--yes", "restore", b["id"], "--target-db", "uncounted")
        finally:
            c.execute("ALTER ROLE CURRENT_USER RESET track_counts")
    assert r.code == 0, r.output  # the counters say 0 rows: trusted, they would fail every table
    assert table_dump(env.pg.url("uncounted")) == table_dump(env.url)


def test_without_a_database_url_or_a_stack_create_is_a_usage_error(env):
    e = {k: v for k, v in env.env.items() if k != "DATABASE_URL"}
    r = run_cli("backup", "create", "--no-objects", config=env.config, env={**e, "DATABASE_URL": ""})
    assert r.code == 2 and "--database-url" in r.stderr, r.output
    assert not (env.config.parent / "state" / "secrets").exists()


# -- globals.sql: the backup's roles --


def test_restore_recreates_a_dropped_role_with_its_grants_and_leaves_existing_roles_alone(env):
    import uuid

    sfx = uuid.uuid4().hex[:8]
    group, keeper, reader = f"group_{sfx}", f"keeper_{sfx}", f"reader_{sfx}"
    admin, db = env.pg.url(schema=None), env.url.split("?")[0]
    seed(env.url, rows=20)
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE ROLE {group} NOLOGIN")
        c.execute(f"CREATE ROLE {reader} LOGIN PASSWORD 'pw-{sfx}' IN ROLE {group}")
        c.execute(f"CREATE ROLE {keeper} NOLOGIN CONNECTION LIMIT 5")
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(f'GRANT SELECT ON "Team" TO {reader}')
        c.execute(f'GRANT SELECT, INSERT ON "AIJob" TO {group}')
        c.execute(f'ALTER TABLE "Legacy" OWNER TO {keeper}')
    b = env.create("--no-objects")
    rows = table_dump(env.url)
    # after the backup: reader and its group are dropped, keeper (which still exists) is changed
    with psycopg.connect(db, autocommit=True) as c:
        c.execute(f"DROP OWNED BY {reader}, {group}")
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP ROLE {reader}")
        c.execute(f"DROP ROLE {group}")
        c.execute(f"ALTER ROLE {keeper} CONNECTION LIMIT 7")
    previous = None
    try:
        # without the roles pg_restore cannot restore the grants: it fails naming the role, and nothing is left
        ng = env.cli("--yes", "restore", b["id"], "--no-globals", "--target-db", f"ng_{sfx}")
        assert ng.code == 1 and "does not exist" in ng.stderr and "pg_restore" in ng.stderr, ng.output
        with psycopg.connect(admin, autocommit=True) as c:
            assert not c.execute("SELECT 1 FROM pg_database WHERE datname LIKE %s", (f"ng_{sfx}%",)).fetchall()
        # verify --restore proves the data without creating roles: ownership and grants are left out, and it says so
        v = env.cli("--json", "backup", "verify", b["id"], "--restore")
        assert v.code == 0, v.output
        assert any(reader in n and group in n and "ownership and grants" in n for n in v.json["notes"]), v.json
        with psycopg.connect(admin, autocommit=True) as c:
            assert not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (reader,)).fetchone()
        dry = env.cli("--json", "restore", b["id"], "--dry-run")
        assert dry.code == 0, dry.output
        assert dry.json["plan"]["roles"]["create"] == [group, reader]
        assert dry.json["plan"]["roles"]["logins"] == [reader] and keeper in dry.json["plan"]["roles"]["existing"]
        assert any(reader in s and "can log in" in s for s in dry.json["plan"]["steps"])
        assert env.cli("--json", "restore", b["id"], "--dry-run", "--no-globals").json["plan"]["roles"] is None

        r = env.cli("--json", "--yes", "restore", b["id"])
        assert r.code == 0, r.output
        previous = r.json["database"]["previous"]
        assert sorted(r.json["roles"]["created"]) == [group, reader] and r.json["roles"]["warnings"] == []
        assert f"pw-{sfx}" not in r.output and "SCRAM-SHA-256" not in r.output
        assert table_dump(env.url) == rows
        with psycopg.connect(db) as c:
            got = c.execute(
                "SELECT has_table_privilege(%s, '\"Team\"', 'SELECT'), has_table_privilege(%s, '\"AIJob\"', 'INSERT'), "
                "pg_has_role(%s, %s, 'MEMBER'), (SELECT rolconnlimit FROM pg_roles WHERE rolname = %s), "
                "(SELECT tableowner FROM pg_tables WHERE tablename = 'Legacy')",
                (reader, group, reader, group, keeper)).fetchone()
        assert got == (True, True, True, 7, keeper)  # grants back; the existing role kept its new limit
        # the re-created login works with the password it had: its hash came back from globals.sql
        psycopg.connect(f"postgresql://{reader}:pw-{sfx}@{env.pg.host}:{env.pg.port}/{env.db}").close()
        # a second restore finds every role there: nothing created, nothing changed
        again = env.cli("--json", "restore", b["id"], "--dry-run")
        assert again.json["plan"]["roles"]["create"] == []
    finally:
        for name in filter(None, [env.db, previous]):
            with psycopg.connect(env.pg.url(name, schema=None), autocommit=True) as c:
                c.execute(f"DROP OWNED BY {reader}, {group}, {keeper}")
        with psycopg.connect(admin, autocommit=True) as c:
            for role in (reader, group, keeper):
                c.execute(f"DROP ROLE IF EXISTS {role}")


# -- the databases a restore keeps --


def test_cleanup_drops_kept_pre_restore_databases_by_retention_never_the_newest(env):
    from datetime import timedelta

    from psycopg import sql

    from aixsss_ops.backup.manifest import utcnow
    from aixsss_ops.backup.previous import marker

    seed(env.url, rows=10)
    b = env.create("--no-objects")
    first = env.cli("--json", "--yes", "restore", b["id"])
    assert first.code == 0, first.output
    first = first.json["database"]["previous"]
    second = env.cli("--yes", "restore", b["id"])  # within the same second too: a name of its own
    assert second.code == 0, second.output
    assert "_pre_restore_" in second.stdout and "backup cleanup" in second.stdout
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        kept = sorted(r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                              (f"{env.db}_pre_restore_%",)).fetchall())
    assert first in kept and len(kept) == 2
    second = next(n for n in kept if n != first)

    dry = env.cli("--json", "backup", "cleanup", "--dry-run")  # default retention: 7 days; both are fresh
    assert dry.code == 0, dry.output
    assert dry.json["drop"] == [] and "newest restore" in dry.json["keep"][second]
    assert "younger than 7 day(s)" in dry.json["keep"][first]

    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:  # make the first one 10 days old
        c.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
            sql.Identifier(first), sql.Literal(marker(env.db, b["id"], utcnow() - timedelta(days=10)))))
    dry = env.cli("--json", "backup", "cleanup", "--dry-run")
    assert [k["name"] for k in dry.json["drop"]] == [first] and dry.json["drop"][0]["backup"] == b["id"]
    assert env.cli("backup", "cleanup").code == 2  # destructive: refuses without --yes and without a TTY
    r = env.cli("--json", "--yes", "backup", "cleanup")
    assert r.code == 0 and r.json["dropped"] == [first], r.output
    # retention 0: still never the newest restore's database unless asked
    r = env.cli("--json", "--yes", "backup", "cleanup", "--older-than", "0")
    assert r.code == 0 and r.json["dropped"] == [], r.output
    r = env.cli("--json", "--yes", "backup", "cleanup", "--older-than", "0", "--include-newest")
    assert r.code == 0 and r.json["dropped"] == [second], r.output
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT 1 FROM pg_database WHERE datname LIKE %s", (f"{env.db}_pre_restore_%",)).fetchall()
        assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (env.db,)).fetchone()  # the live one stays


# -- the manifest's signature --

BACKUP_KEY = {"AIXSSS_BACKUP_ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef-backup"}


def test_a_signed_manifest_that_was_altered_is_refused_by_verify_and_restore(env):
    seed(env.url, rows=20)
    b = env.create("--no-objects", env=BACKUP_KEY)  # a key, no encryption: the manifest is signed all the same
    path = env.dir / b["id"] / "manifest.json"
    assert (env.dir / b["id"] / "manifest.hmac").is_file()
    assert BACKUP_KEY["AIXSSS_BACKUP_ENCRYPTION_KEY"] not in (env.dir / b["id"] / "manifest.hmac").read_text()
    ok = env.cli("backup", "verify", b["id"], env=BACKUP_KEY)
    assert ok.code == 0 and "manifest authenticated (HMAC-SHA256)" in ok.stdout, ok.output

    # a forger swaps a dump file and rewrites its checksum in the manifest: the checksums agree again
    m = json.loads(path.read_text())
    dat = sorted((env.dir / b["id"] / "db").glob("*.dat.gz"), key=lambda p: p.stat().st_size)[-1]
    dat.write_bytes(dat.read_bytes()[:-8] + b"\0" * 8)
    from aixsss_ops.backup.manifest import sha256_file

    m["files"][f"db/{dat.name}"]["sha256"] = sha256_file(dat)[0]
    path.write_text(json.dumps(m, indent=2))
    r = env.cli("--json", "backup", "verify", b["id"], env=BACKUP_KEY)
    assert r.code == 3 and any("manifest.json" in p and "authentication failed" in p for p in r.json["problems"]), r.output
    r = env.cli("--yes", "restore", b["id"], "--target-db", "forged_never", env=BACKUP_KEY)
    assert r.code == 3 and "manifest.json" in r.stderr and "authentication failed" in r.stderr, r.output
    with psycopg.connect(env.pg.url(schema=None), autocommit=True) as c:
        assert not c.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'forged_never%'").fetchall()
    # without the key nothing can tell: verify refuses (exit 3) rather than pass a manifest it cannot check
    r = env.cli("--json", "backup", "verify", b["id"])
    assert r.code == 3 and r.json["ok"] is False and "AIXSSS_BACKUP_ENCRYPTION_KEY is not set" in r.json["error"], \
        r.output
    # another key: named as such
    r = env.cli("backup", "verify", b["id"], env={"AIXSSS_BACKUP_ENCRYPTION_KEY": "another-key-another-key-another!!"})
    assert r.code == 3 and "another backup key" in r.stderr, r.output


def test_an_encrypted_backup_whose_signature_is_removed_is_refused(env):
    seed(env.url, rows=20)
    b = env.create("--no-objects", "--encrypt", env=BACKUP_KEY)
    (env.dir / b["id"] / "manifest.hmac").unlink()
    r = env.cli("--json", "backup", "verify", b["id"], env=BACKUP_KEY)
    assert r.code == 3 and any("manifest.hmac" in p for p in r.json["problems"]), r.output
    r = env.cli("--yes", "restore", b["id"], "--target-db", "unsigned_never", env=BACKUP_KEY)
    assert r.code == 3 and "manifest.hmac" in r.stderr, r.output


def test_without_a_key_verify_says_the_manifest_is_unauthenticated(env):
    seed(env.url, rows=20)
    b = env.create("--no-objects")
    assert not (env.dir / b["id"] / "manifest.hmac").exists()
    r = env.cli("backup", "verify", b["id"])
    assert r.code == 0 and "manifest unauthenticated (checksums only)" in r.stdout, r.output
    r = env.cli("--json", "backup", "verify", b["id"])
    assert r.json["manifest"] == "unauthenticated" and any("checksums only" in n for n in r.json["notes"])


def test_a_serial_restore_checks_every_table_after_pg_restore(env):
    seed(env.url, rows=50)
    rows = table_dump(env.url)
    b = env.create("--no-objects")
    r = env.cli("--json", "restore", b["id"], "--target-db", "serial_restored", "--jobs", "1")
    assert r.code == 0, r.output
    assert r.json["database"]["tables"] == 5 and table_dump(env.pg.url("serial_restored")) == rows
