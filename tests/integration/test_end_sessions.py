"""Ending the sessions on a database before it is renamed or dropped, as a role that is not a superuser (a managed
Postgres's admin): the sessions it may not end are named, never an internal error."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from aixsss_ops.backup import postgres as pgb
from aixsss_ops.backup.restore import _swap
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import OpsError


@pytest.fixture
def manager(pg_server):
    """A CREATEDB role owning two databases, and a superuser session open on the first."""
    role, password = f"mgr_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    live, scratch = f"live_{uuid.uuid4().hex[:8]}", f"scratch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url(schema=None), autocommit=True) as su:
        su.execute(f'CREATE ROLE "{role}" LOGIN CREATEDB PASSWORD \'{password}\'')
        for db in (live, scratch):
            su.execute(f'CREATE DATABASE "{db}" OWNER "{role}"')
    url = f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/postgres"
    held = psycopg.connect(pg_server.url(live, schema=None))
    own = psycopg.connect(url.replace("/postgres", f"/{scratch}"))
    try:
        yield {"admin": parse_database_url(url), "live": live, "scratch": scratch, "held": held, "own": own,
               "su": pg_server.superuser}
    finally:
        held.close()
        own.close()


def test_the_sessions_a_role_may_not_end_are_returned_and_its_own_are_ended(manager):
    with manager["admin"].connect() as c:
        kept = pgb.end_sessions(c, [manager["live"], manager["scratch"]])
    assert kept == [f"{manager['su']} (pid {manager['held'].info.backend_pid}) on {manager['live']}"]
    with pytest.raises(psycopg.OperationalError):
        manager["own"].execute("SELECT 1")  # ended
    assert manager["held"].execute("SELECT 1").fetchone() == (1,)


def test_a_switch_blocked_by_a_superuser_session_names_it_and_changes_nothing(manager):
    d = {"name": manager["live"], "scratch": manager["scratch"], "exists": True,
         "previous": f"{manager['live']}_pre", "backup": "b1"}
    with pytest.raises(OpsError) as e:
        _swap(manager["admin"], d, timeout=0.5)
    assert "sessions this role may not end are still open" in e.value.message
    assert f"{manager['su']} (pid {manager['held'].info.backend_pid}) on {manager['live']}" in e.value.message
    with manager["admin"].connect() as c:
        names = {r[0] for r in c.execute("SELECT datname FROM pg_database")}
    assert {manager["live"], manager["scratch"]} <= names and d["previous"] not in names


def test_a_switch_ends_the_roles_own_sessions_and_renames(manager):
    manager["held"].close()
    d = {"name": manager["live"], "scratch": manager["scratch"], "exists": True,
         "previous": f"{manager['live']}_pre", "backup": "b1"}
    _swap(manager["admin"], d, timeout=5)
    with manager["admin"].connect() as c:
        names = {r[0] for r in c.execute("SELECT datname FROM pg_database")}
    assert {manager["live"], d["previous"]} <= names and manager["scratch"] not in names
