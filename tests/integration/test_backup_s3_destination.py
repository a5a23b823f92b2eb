"""backup.destination = "s3": backups kept in a bucket other than the app's, against real PostgreSQL and SeaweedFS."""

from __future__ import annotations

import io
import json
import uuid

import pytest

from tests.conftest import state_tmpdir
from tests.integration.backup_helpers import mutate_db, mutate_objects, objects_state, seed, seed_objects, table_dump
from tests.integration.test_backup import Env

PREFIX = "nightly"


def _env(pg_server, s3_server, **backup) -> Env:
    dest = backup.pop("s3_bucket", None) or f"bk-{uuid.uuid4().hex[:12]}"  # created by the first backup
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-bk-s3-"), destination="s3", s3_bucket=dest,
              s3_prefix=PREFIX, **backup)
    env.dest = dest
    return env


@pytest.fixture
def env(pg_server, s3_server):
    return _env(pg_server, s3_server)


def _keys(env, backup_id: str = "") -> list[str]:
    prefix = f"{PREFIX}/{backup_id + '/' if backup_id else ''}"
    return sorted(o.object_name for o in env.client.list_objects(env.dest, prefix=prefix, recursive=True))


def _local_backups(env) -> list[str]:
    """Anything under the staging directory that is not a dot-entry (a complete-looking local backup)."""
    return sorted(p.name for p in env.dir.iterdir() if not p.name.startswith(".")) if env.dir.exists() else []


def test_create_uploads_to_the_bucket_and_round_trips(env):
    seed(env.url)
    seed_objects(env.client, env.bucket, n=5)
    b = env.create("--label", "remote")
    assert b["path"] == f"s3://{env.dest}/{PREFIX}/{b['id']}"
    keys = _keys(env, b["id"])
    base = f"{PREFIX}/{b['id']}/"
    assert base + "manifest.json" in keys and base + "globals.sql" in keys and base + "objects.json" in keys
    assert base + "db/toc.dat" in keys
    manifest = json.loads(env.client.get_object(env.dest, base + "manifest.json").read())
    assert sorted(base + f for f in manifest["files"]) == sorted(k for k in keys if not k.endswith("manifest.json"))
    assert _local_backups(env) == [] and not [p for p in env.dir.iterdir() if p.name.endswith(".partial")]
    assert not list(env.client.list_objects(env.bucket, prefix=PREFIX))  # nothing went into the app's bucket

    listed = env.cli("--json", "backup", "list")
    assert listed.code == 0, listed.output
    assert [(x["id"], x["status"], x["label"]) for x in listed.json["backups"]] == [(b["id"], "complete", "remote")]

    r = env.cli("--json", "backup", "verify", b["id"])
    assert r.code == 0 and r.json["ok"], r.output
    r = env.cli("--json", "backup", "verify", b["id"], "--restore")
    assert r.code == 0, r.output
    assert r.json["tables_compared"] == 5 and r.json["objects_checked"] == 5
    assert env.cli("--json", "backup", "list").json["backups"][0]["last_verify_ok"] is True  # meta.json in the bucket
    assert base + "meta.json" in _keys(env, b["id"])

    rows_at_t, objs_at_t = table_dump(env.url), objects_state(env.client, env.bucket)
    mutate_db(env.url)
    mutate_objects(env.client, env.bucket)
    r = env.cli("--json", "--yes", "restore", b["id"])
    assert r.code == 0, r.output
    assert table_dump(env.url) == rows_at_t and objects_state(env.client, env.bucket) == objs_at_t
    assert _local_backups(env) == [] and not [p for p in env.dir.iterdir() if p.name.startswith(".fetch-")]


def test_tampered_object_in_the_bucket_is_detected(env):
    seed(env.url)
    b = env.create("--no-objects")
    base = f"{PREFIX}/{b['id']}/"
    dats = [o for o in env.client.list_objects(env.dest, prefix=base + "db/") if o.object_name.endswith(".dat.gz")]
    victim = max(dats, key=lambda o: o.size).object_name
    raw = bytearray(env.client.get_object(env.dest, victim).read())
    raw[len(raw) // 2] ^= 0x01
    env.client.put_object(env.dest, victim, io.BytesIO(bytes(raw)), len(raw))
    name = victim[len(base):]
    r = env.cli("backup", "verify", b["id"])
    assert r.code == 3 and name in r.stderr, r.output
    r = env.cli("--yes", "restore", b["id"], "--target-db", "never_created")
    assert r.code == 3 and name in r.stderr, r.output
    assert env.cli("--json", "backup", "list").json["backups"][0]["last_verify_ok"] is False
    env.client.remove_object(env.dest, victim)  # a missing file is named too
    r = env.cli("backup", "verify", b["id"])
    assert r.code == 3 and f"{name}: missing" in r.stderr, r.output


def test_upload_without_manifest_is_incomplete_and_cleaned(env):
    seed(env.url, rows=10)
    b = env.create("--no-objects")
    # an interrupted upload: files but no manifest
    env.client.put_object(env.dest, f"{PREFIX}/20000101T000000Z-dead/db/toc.dat", io.BytesIO(b"x"), 1)
    listed = env.cli("--json", "backup", "list").json["backups"]
    assert [(x["id"], x["status"]) for x in listed] == [(b["id"], "complete"), ("20000101T000000Z-dead", "incomplete")]
    assert env.cli("backup", "verify", "20000101T000000Z-dead").code == 3
    done = env.create("--no-objects")
    assert f"s3://{env.dest}/{PREFIX}/20000101T000000Z-dead" in done["cleaned"]
    assert [x["id"] for x in env.cli("--json", "backup", "list").json["backups"]] == [b["id"], done["id"]]


def test_prune_deletes_from_the_bucket(pg_server, s3_server):
    env = _env(pg_server, s3_server, keep_last=2, keep_daily=0, keep_weekly=0)
    seed(env.url, rows=10)
    ids = [env.create("--no-objects")["id"] for _ in range(4)]
    assert env.cli("backup", "keep", ids[0]).code == 0
    dry = env.cli("--json", "backup", "prune", "--dry-run")
    assert dry.code == 0 and dry.json["delete"] == [ids[1]]
    r = env.cli("--json", "--yes", "backup", "prune")
    assert r.code == 0, r.output
    assert sorted(x["id"] for x in env.cli("--json", "backup", "list").json["backups"]) == sorted([ids[0], ids[2], ids[3]])
    assert _keys(env, ids[1]) == [] and _keys(env, ids[2])


@pytest.mark.parametrize("which", ["configured", "effective"])
def test_the_apps_bucket_is_refused_as_destination(pg_server, s3_server, which):
    if which == "configured":
        env = _env(pg_server, s3_server, s3_bucket="aixsss-assets")  # cfg.s3.bucket's default
    else:
        env = _env(pg_server, s3_server)
        env.env["S3_BUCKET"] = env.dest  # the app's bucket, from the environment, is the destination
    seed(env.url, rows=5)
    for args in (("backup", "create", "--no-objects"), ("backup", "list")):
        r = env.cli(*args)
        assert r.code == 2 and "app's own bucket" in r.stderr, r.output
    assert not env.dir.exists() or _local_backups(env) == []


def test_destination_s3_without_bucket_is_a_config_error(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-bk-s3-"), destination="s3")
    r = env.cli("backup", "list")
    assert r.code == 2 and "s3_bucket" in r.stderr, r.output


def test_a_manifest_altered_in_the_bucket_is_refused(env):
    key = {"AIXSSS_BACKUP_ENCRYPTION_KEY": "0123456789abcdef0123456789abcdef-backup"}
    seed(env.url, rows=10)
    b = env.create("--no-objects", env=key)
    base = f"{PREFIX}/{b['id']}/"
    assert base + "manifest.hmac" in _keys(env, b["id"])  # uploaded before the manifest
    ok = env.cli("--json", "backup", "verify", b["id"], env=key)
    assert ok.code == 0 and ok.json["manifest"] == "authenticated", ok.output
    manifest = json.loads(env.client.get_object(env.dest, base + "manifest.json").read())
    manifest["tables"]["public.Team"]["rows"] += 1  # the forger's version of the truth
    body = json.dumps(manifest).encode()
    env.client.put_object(env.dest, base + "manifest.json", io.BytesIO(body), len(body))
    r = env.cli("backup", "verify", b["id"], env=key)
    assert r.code == 3 and "manifest.json" in r.stderr and "authentication failed" in r.stderr, r.output
    r = env.cli("--yes", "restore", b["id"], "--target-db", "never_created", env=key)
    assert r.code == 3 and "manifest.json" in r.stderr, r.output
