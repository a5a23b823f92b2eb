"""Backups, restores and verifies as a role that is not a superuser (a managed Postgres's main user), through the CLI
on real PostgreSQL and SeaweedFS: what the role may not do is named before anything changes, never an internal
error."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from aixsss_ops.backup import objects
from aixsss_ops.backup.restore import _check_owner
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import CheckFailed
from tests.conftest import state_tmpdir
from tests.integration.backup_helpers import seed, seed_objects, table_dump
from tests.integration.test_backup import Env


def _su(pg_server):
    return psycopg.connect(pg_server.url(schema=None), autocommit=True)


class RoleEnv(Env):
    """``Env`` whose DATABASE_URL is a role of its own owning the database (``createdb``: with CREATEDB)."""

    def __init__(self, pg_server, s3_server, createdb: bool = True):
        super().__init__(pg_server, s3_server, state_tmpdir("aixsss-role-"))
        self.role, self.password = f"r_{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        with _su(pg_server) as c:
            c.execute(f"CREATE ROLE \"{self.role}\" LOGIN {'CREATEDB' if createdb else ''} PASSWORD '{self.password}'")
            c.execute(f'ALTER DATABASE "{self.db}" OWNER TO "{self.role}"')
            c.execute(f'GRANT ALL ON SCHEMA public TO "{self.role}"')
        self.url = f"postgresql://{self.role}:{self.password}@{pg_server.host}:{pg_server.port}/{self.db}?schema=public"
        self.env["DATABASE_URL"] = self.url

    def scratch_left(self) -> list[str]:
        with _su(self.pg) as c:
            return [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                            (f"{self.db[:40]}_restoring_%",))]


@pytest.fixture
def role_env(pg_server, s3_server):
    return RoleEnv(pg_server, s3_server)


def test_a_role_without_createdb_is_told_so_by_the_plan_and_by_verify(pg_server, s3_server):
    env = RoleEnv(pg_server, s3_server, createdb=False)
    seed(env.url)
    rows = table_dump(env.url)
    b = env.create("--no-objects")
    for args in (("--yes", "restore", b["id"]), ("restore", b["id"], "--dry-run"),
                 ("--yes", "restore", b["id"], "--target-db", "never_made"), ("backup", "verify", b["id"], "--restore")):
        r = env.cli(*args)
        assert r.code == 1 and f"the role {env.role} may not create databases" in r.stderr, (args, r.output)
        assert "CREATEDB" in r.stderr and "internal error" not in r.output and env.password not in r.output
    assert table_dump(env.url) == rows and not env.scratch_left()


def test_a_session_the_role_may_not_end_stops_the_restore_before_it_starts(role_env):
    env = role_env
    seed(env.url)
    rows = table_dump(env.url)
    b = env.create("--no-objects")
    with psycopg.connect(env.pg.url(env.db, schema=None)) as held:  # a superuser's session on the live database
        r = env.cli("--yes", "restore", b["id"])
        assert r.code == 3, r.output
        assert "may not end" in r.stderr and f"pid {held.info.backend_pid}" in r.stderr and "nothing was changed" \
            in r.stderr, r.output
        assert "pg_restore into" not in r.output  # refused before any work
        assert held.execute("SELECT 1").fetchone() == (1,)
    assert table_dump(env.url) == rows and not env.scratch_left()
    # without it, the same restore goes through as this role (its own sessions are ended)
    r = env.cli("--yes", "restore", b["id"])
    assert r.code == 0, r.output
    assert table_dump(env.url) == rows and not env.scratch_left()


def test_scratch_databases_of_another_role_are_left_to_it(role_env, pg_server):
    other_role, other_db = f"o_{uuid.uuid4().hex[:8]}", f"o{uuid.uuid4().hex[:8]}_restoring_abcdef"
    with _su(pg_server) as c:
        c.execute(f'CREATE ROLE "{other_role}"')
        c.execute(f'CREATE DATABASE "{other_db}" OWNER "{other_role}"')
    try:
        r = role_env.cli("--json", "--yes", "backup", "cleanup")
        assert r.code == 0, r.output
        assert other_db not in r.output
        with _su(pg_server) as c:
            assert c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (other_db,)).fetchone()
    finally:
        with _su(pg_server) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{other_db}"')
            c.execute(f'DROP ROLE IF EXISTS "{other_role}"')


def test_the_restored_copy_needs_membership_in_the_backed_up_owner(role_env, pg_server):
    owner = f"own_{uuid.uuid4().hex[:8]}"
    with _su(pg_server) as c:
        c.execute(f'CREATE ROLE "{owner}"')
    admin = parse_database_url(role_env.url.replace(f"/{role_env.db}?", "/postgres?"))
    with pytest.raises(CheckFailed) as e:
        _check_owner(admin, role_env.role, owner)
    assert f"may not create a database owned by {owner}" in e.value.message and f'GRANT "{owner}"' in e.value.hint
    with _su(pg_server) as c:
        c.execute(f'GRANT "{owner}" TO "{role_env.role}"')
    _check_owner(admin, role_env.role, owner)  # a member may
    _check_owner(admin, role_env.role, "no_such_role_here")  # an owner this server lacks: the copy keeps the role's


def test_a_read_only_role_is_named_as_such(role_env):
    env = role_env
    seed(env.url)
    b = env.create("--no-objects")
    with _su(env.pg) as c:
        c.execute(f'ALTER ROLE "{env.role}" SET default_transaction_read_only = on')
    r = env.cli("--yes", "restore", b["id"], "--target-db", f"ro_{uuid.uuid4().hex[:6]}")
    assert r.code == 1 and "read-only" in r.stderr and "internal error" not in r.output, r.output


def test_a_restore_into_another_database_leaves_the_live_objects_alone(role_env):
    env = role_env
    seed(env.url)
    seed_objects(env.client, env.bucket, n=3)
    b = env.create()
    plan = env.cli("--json", "restore", b["id"], "--target-db", "side_copy", "--dry-run")
    assert plan.code == 0, plan.output
    assert plan.json["plan"]["objects"] is None
    assert any("--objects-only" in w for w in plan.json["plan"]["warnings"]), plan.output
    r = env.cli("--yes", "restore", b["id"], "--target-db", "side_copy", "--objects-only")
    assert r.code == 2 and "--target-db" in r.stderr, r.output


def test_an_s3_key_that_may_not_write_stops_the_restore_before_the_database_is_replaced(pg_server, s3_server):
    env = Env(pg_server, s3_server, state_tmpdir("aixsss-s3ro-"))
    seed(env.url)
    seed_objects(env.client, env.bucket, n=3)
    rows = table_dump(env.url)
    b = env.create()
    reader = {"S3_ACCESS_KEY": s3_server.reader[0], "S3_SECRET_KEY": s3_server.reader[1]}
    r = env.cli("--yes", "restore", b["id"], env=reader)
    assert r.code == 3 and f"may not write to {env.bucket}" in r.stderr and "nothing was changed" in r.stderr, r.output
    assert "pg_restore into" not in r.output and s3_server.reader[1] not in r.output
    assert table_dump(env.url) == rows
    # a key that may write: the probe leaves no version behind
    for bucket in (env.bucket, s3_server.new_bucket(versioned=True)):
        objects.check_writable(s3_server.target(), bucket)
        assert list(env.client.list_objects(bucket, prefix=objects.PROBE_PREFIX, include_version=True)) == []
    with pytest.raises(CheckFailed, match="may not write"):
        objects.check_writable(s3_server.target(s3_server.reader), env.bucket)


def test_a_backup_by_a_role_that_may_not_read_every_table_names_them_before_writing(role_env):
    env = role_env
    seed(env.url)
    with psycopg.connect(env.pg.url(env.db, schema=None), autocommit=True) as c:  # a superuser's, not the role's
        c.execute("CREATE TABLE public.audit_t (a int)")
        c.execute("CREATE SCHEMA hidden")
        c.execute("CREATE TABLE hidden.h (a int)")
        c.execute("CREATE SEQUENCE public.audit_seq")
    for args in (("backup", "create", "--no-objects"), ("--json", "backup", "create", "--no-objects")):
        r = env.cli(*args)
        assert r.code == 3, r.output
        assert f"the role {env.role} may not read 3 of" in r.output, r.output
        for name in ("public.audit_t", "public.audit_seq", "hidden (the schema)"):
            assert name in r.output, r.output
        assert "GRANT SELECT" in r.output and "snapshot taken" not in r.output and env.password not in r.output
    assert env.cli("--json", "backup", "list").json["backups"] == []
    with psycopg.connect(env.pg.url(env.db, schema=None), autocommit=True) as c:
        c.execute(f'GRANT SELECT ON public.audit_t, public.audit_seq TO "{env.role}"')
        c.execute(f'GRANT USAGE ON SCHEMA hidden TO "{env.role}"')
        c.execute(f'GRANT SELECT ON hidden.h TO "{env.role}"')
    env.create("--no-objects")  # granted, the same role backs it up
