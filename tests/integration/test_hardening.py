"""Hardening against real services: passwords with "@", "/" and spaces reach Postgres and Redis intact and never
show; backup list keeps the id whole at 80 columns; a renamed backup is not complete; a signed manifest is not
passed without its key."""

from __future__ import annotations

import json
import secrets
import uuid

import psycopg
import pytest

from tests.cli import REPO, run_cli
from tests.conftest import state_tmpdir
from tests.integration.backup_helpers import seed
from tests.integration.test_backup import BACKUP_KEY, Env

# -- Postgres: a password with "@" (libpq stops at the first "@", urlsplit at the last) ----------------------


def _role(pg_server, password: str) -> tuple[str, str]:
    role, db = f"r_{uuid.uuid4().hex[:10]}", pg_server.create_database()
    with psycopg.connect(pg_server.url(schema=None), autocommit=True) as c:
        c.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        c.execute(f'GRANT ALL ON DATABASE "{db}" TO "{role}"')
        c.execute(f'ALTER DATABASE "{db}" OWNER TO "{role}"')
    return role, db


def test_a_postgres_password_with_at_connects_and_never_shows(pg_server):
    tail = secrets.token_hex(4)
    password = f"Pw3@{tail}"
    role, db = _role(pg_server, password)
    url = f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/{db}?schema=public"
    r = run_cli("--json", "migrate", "status", "--database-url", url,
                "--migrations-dir", str(REPO / "app" / "migrations"), timeout=120)
    assert r.code in (0, 3) and "unreachable" not in r.output, r.output  # 3: migrations pending on a fresh db
    assert password not in r.output and tail not in r.output, r.output
    # the same password but wrong: refused by the server, and still not a piece of it in the error
    bad = f"postgresql://{role}:Pw3@{tail}x@{pg_server.host}:{pg_server.port}/{db}"
    r = run_cli("migrate", "status", "--database-url", bad, "--migrations-dir", str(REPO / "app" / "migrations"),
                timeout=120)
    assert r.code == 1 and "failed to resolve host" not in r.output, r.output
    assert tail not in r.output and f"{role}:****@{pg_server.host}" in r.stderr, r.output


# -- Redis: an ACL user whose password holds "@", "/" and a space ------------------------------------------


@pytest.mark.parametrize("password", ["Pw3@Pw3-{t}", "Sec ret/{t}@x"])
def test_a_redis_password_with_at_slash_and_space_works_and_never_shows(redis_server, queue_name, password):
    import redis

    tail = secrets.token_hex(4)
    password = password.format(t=tail)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin = redis.Redis.from_url(redis_server.url)
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
    try:
        url = f"redis://{user}:{password}@{redis_server.host}:{redis_server.port}/0"
        r = run_cli("--json", "queue", "stats", "--redis-url", url, "--queue", queue_name, timeout=60)
        assert r.code == 0, r.output
        assert r.json["queue"] == queue_name
        assert password not in r.output and tail not in r.output, r.output
        # a wrong password of the same shape: refused, named with the masked URL only
        r = run_cli("queue", "stats", "--redis-url", url.replace(password, password + "x"), "--queue", queue_name,
                    timeout=60)
        assert r.code == 1 and f"redis://{user}:****@{redis_server.host}" in r.stderr, r.output
        assert password not in r.output and tail not in r.output, r.output
    finally:
        admin.execute_command("ACL", "DELUSER", user)


# -- backups -------------------------------------------------------------------------------------------------


@pytest.fixture
def env(pg_server, s3_server):
    return Env(pg_server, s3_server, state_tmpdir("aixsss-hard-"))


def test_backup_list_at_80_columns_keeps_the_id_whole(env):
    seed(env.url, rows=10)
    b = env.create("--no-objects", "--label", "a label long enough to need wrapping at eighty columns")
    r = env.cli("backup", "list", env={"COLUMNS": "80"})
    assert r.code == 0, r.output
    assert b["id"] in r.stdout, r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80, r.stdout


def test_a_backup_directory_renamed_to_another_id_is_not_complete(env):
    seed(env.url, rows=10)
    b = env.create("--no-objects")
    renamed = "20200101T000000Z-beef"
    (env.dir / b["id"]).rename(env.dir / renamed)
    rows = env.cli("--json", "backup", "list").json["backups"]
    assert [(x["id"], x["status"]) for x in rows] == [(renamed, "mismatched")], rows
    assert b["id"] in rows[0]["problem"] and renamed in rows[0]["problem"]
    r = env.cli("backup", "verify", renamed)
    assert r.code == 3 and "mismatched" in r.stderr, r.output
    r = env.cli("backup", "verify", "latest")
    assert r.code == 2 and "no complete backup" in r.stderr, r.output
    r = env.cli("--yes", "restore", renamed, "--target-db", "renamed_never")
    assert r.code == 3, r.output


def test_verify_of_a_signed_backup_without_its_key_refuses(env):
    seed(env.url, rows=10)
    b = env.create("--no-objects", env=BACKUP_KEY)
    assert (env.dir / b["id"] / "manifest.hmac").is_file()
    r = env.cli("backup", "verify", b["id"])
    assert r.code == 3, r.output
    assert "signed" in r.stderr and "AIXSSS_BACKUP_ENCRYPTION_KEY" in r.stderr, r.output
    # a refusal records no verification (the backup is not bad, the check did not happen)
    meta = env.dir / b["id"] / "meta.json"
    assert "verify" not in (json.loads(meta.read_text()) if meta.exists() else {})
    r = env.cli("backup", "verify", b["id"], env=BACKUP_KEY)
    assert r.code == 0 and "manifest authenticated" in r.stdout, r.output
