"""A managed service's role default ``statement_timeout`` (``ALTER ROLE … SET statement_timeout``) does not cancel the
tool's own backup sessions: they turn it off, as pg_dump does in its own."""

from __future__ import annotations

import secrets
import uuid

import psycopg
import pytest

from tests.cli import run_cli
from tests.conftest import stack_config, state_tmpdir

ROWS = 400_000


def _role_url(pg_server, role: str, password: str, db: str) -> str:
    return f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/{db}?schema=public"


@pytest.fixture
def managed(pg_server):
    """A database owned by a non-superuser role whose sessions default to statement_timeout = '50ms', holding a table
    whose checksum takes longer than that."""
    role, password = f"svc_{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(12)
    db = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.url(schema=None), autocommit=True) as su:
        su.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        su.execute(f'CREATE DATABASE "{db}" OWNER {role}')
    url = _role_url(pg_server, role, password, db)
    with psycopg.connect(url.split("?")[0], autocommit=True) as c:
        c.execute(f"CREATE TABLE big AS SELECT g AS id, md5(g::text) || repeat(md5(random()::text), 4) AS payload, "
                  f"jsonb_build_object('n', g, 'at', now()) AS doc FROM generate_series(1, {ROWS}) g")
        c.execute("ALTER TABLE big ADD PRIMARY KEY (id)")
        c.execute("ANALYZE big")
    with psycopg.connect(pg_server.url(schema=None), autocommit=True) as su:
        su.execute(f"ALTER ROLE {role} SET statement_timeout = '50ms'")
    return url


def test_backup_create_succeeds_under_a_role_statement_timeout(managed):
    # the role's default bites: a whole-table checksum in a plain session of the role is cancelled
    with psycopg.connect(managed.split("?")[0], autocommit=True) as c:
        assert c.execute("SHOW statement_timeout").fetchone()[0] == "50ms"
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            c.execute("SELECT count(*), sum(hashtextextended(b::text, 0)) FROM big b").fetchone()

    root = state_tmpdir("aixsss-bk-timeout-")
    config = stack_config(root, backup={"dir": str(root / "backups")})
    r = run_cli("--json", "backup", "create", "--no-objects", "--jobs", "2", config=config,
                env={"DATABASE_URL": managed})
    assert r.code == 0, r.output
    assert "statement timeout" not in r.output
    assert r.json["rows"] == ROWS

    listed = run_cli("--json", "backup", "list", config=config, env={"DATABASE_URL": managed})
    assert listed.code == 0 and [b["status"] for b in listed.json["backups"]] == ["complete"]
