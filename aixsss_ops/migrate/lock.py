"""Prisma Migrate's advisory lock: ``pg_advisory_lock(72707369)``, session level.

Taking the very same lock makes aixsss-ops and Prisma exclude each other, and concurrent
deploys from several CI runners or hosts serialize. A waiting runner gives up after a
timeout and names who holds the lock (from pg_locks and pg_stat_activity).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aixsss_ops.errors import OpsError

if TYPE_CHECKING:
    import psycopg

LOCK_KEY = 72707369
APPLICATION_NAME = "aixsss-ops migrate"

# A bigint advisory key shows in pg_locks as classid = high 32 bits, objid = low 32 bits, objsubid = 1.
_HOLDER_SQL = """
SELECT a.pid, a.application_name, a.usename, host(a.client_addr), a.backend_start, a.state, a.query
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.pid <> pg_backend_pid()
LIMIT 1
"""


# Sessions holding (or queued for) a lock on a relation of this database: who a migration statement that gave up
# waiting for a table lock (lock_timeout) was waiting for. Granted locks first, oldest transaction first.
_RELATION_HOLDERS_SQL = """
SELECT a.pid, a.application_name, a.usename, host(a.client_addr), a.backend_start, a.state, a.query,
       l.mode, l.granted, c.relname
FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)'
ORDER BY l.granted DESC, a.xact_start NULLS LAST, l.pid
"""
_QUOTED = re.compile(r'"((?:[^"]|"")+)"')
_BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


@dataclass(frozen=True)
class Holder:
    pid: int
    application_name: str | None
    user: str | None
    client: str | None
    since: object
    state: str | None
    query: str | None

    def describe(self) -> str:
        who = self.application_name or "unknown client"
        parts = [f"pid {self.pid}", f"'{who}'"]
        if self.user:
            parts.append(f"user {self.user}")
        if self.client:
            parts.append(f"from {self.client}")
        if self.since is not None:
            parts.append(f"connected since {self.since.isoformat(timespec='seconds')}")
        if self.state:
            parts.append(f"state {self.state}")
        return ", ".join(parts)


@dataclass(frozen=True)
class RelationHolder:
    """A session holding (or queued for) a lock on a relation a migration statement names."""

    session: Holder
    mode: str
    granted: bool
    relation: str

    @property
    def pid(self) -> int:
        return self.session.pid

    def describe(self) -> str:
        how = "holding" if self.granted else "waiting for"
        return f"{self.session.describe()}, {how} {self.mode} on \"{self.relation}\""


class LockTimeout(OpsError):
    """Another migrator held the lock for longer than the timeout (exit 1)."""


def holder(conn: psycopg.Connection) -> Holder | None:
    """Who holds the migration lock on this database right now (None when free or held by us)."""
    row = conn.execute(_HOLDER_SQL, (LOCK_KEY,)).fetchone()
    return Holder(*row) if row else None


def _names_in(text: str) -> tuple[set[str], set[str]]:
    """Quoted identifiers (exact) and bare words (folded to lower case, as PostgreSQL folds them) of ``text``."""
    quoted = {m.group(1).replace('""', '"') for m in _QUOTED.finditer(text)}
    bare = {w.lower() for w in _BARE.findall(_QUOTED.sub(" ", text))}
    return quoted, bare


def relation_holders(conn: psycopg.Connection, statement: str | None) -> list[RelationHolder]:
    """The other sessions holding (or queued for) a lock on a relation ``statement`` names, one entry per session
    (its first lock: granted ones first); on every user relation when ``statement`` names none of them."""
    rows = conn.execute(_RELATION_HOLDERS_SQL).fetchall()
    found = [RelationHolder(Holder(*r[:7]), r[7], bool(r[8]), r[9]) for r in rows]
    if statement:
        quoted, bare = _names_in(statement)
        named = [h for h in found if h.relation in quoted or h.relation in bare]
        found = named or found
    seen: set[int] = set()
    out = []
    for h in found:
        if h.pid not in seen:
            seen.add(h.pid)
            out.append(h)
    return out


def try_acquire(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]


def release(conn: psycopg.Connection) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))


def acquire(conn: psycopg.Connection, timeout: float, on_wait: Callable[[str], None] | None = None) -> float:
    """Take the lock (waiting at most ``timeout`` seconds); returns the seconds waited.

    ``conn`` must be in autocommit mode: the lock is session-level and outlives transactions.
    """
    import psycopg

    if try_acquire(conn):
        return 0.0
    start = time.monotonic()
    h = holder(conn)
    if on_wait:
        on_wait(f"waiting up to {timeout:g}s for the migration lock held by {h.describe() if h else 'another session'}")
    try:
        conn.execute(f"SET lock_timeout = {max(1, int(timeout * 1000))}")
        conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
    except psycopg.errors.LockNotAvailable:
        h = holder(conn)
        raise LockTimeout(
            f"timed out after {timeout:g}s waiting for the migration lock (pg_advisory_lock({LOCK_KEY})); "
            f"held by {h.describe() if h else 'a session that has just released it'}",
            hint="another `aixsss-ops migrate deploy` or `prisma migrate deploy` is running against this database; "
            "wait for it, or raise --lock-timeout",
        ) from None
    finally:
        conn.execute("RESET lock_timeout")
    return time.monotonic() - start


@contextmanager
def migration_lock(conn: psycopg.Connection, timeout: float, on_wait: Callable[[str], None] | None = None):
    waited = acquire(conn, timeout, on_wait)
    try:
        yield waited
    finally:
        # the connection may be gone; the server releases session locks then anyway
        with suppress(Exception):
            release(conn)
