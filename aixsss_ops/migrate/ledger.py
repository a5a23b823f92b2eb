"""The ``_prisma_migrations`` table, exactly as Prisma's schema engine creates and writes it.

Columns and types are those of prisma-engines' PostgreSQL flavour (``create_migrations_table``);
the row semantics those of its ``sql_migration_persistence``:

* started:  a row with ``finished_at`` NULL, ``applied_steps_count`` 0
* failed:   ``finished_at`` NULL, ``rolled_back_at`` NULL, the error in ``logs``
* applied:  ``finished_at`` set (``applied_steps_count`` 1 for a run script, 0 for resolve/baseline)
* rolled back (resolve): ``rolled_back_at`` set; rows are never deleted
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

TABLE = "_prisma_migrations"

CREATE_TABLE = """\
CREATE TABLE _prisma_migrations (
    id                      VARCHAR(36) PRIMARY KEY NOT NULL,
    checksum                VARCHAR(64) NOT NULL,
    finished_at             TIMESTAMPTZ,
    migration_name          VARCHAR(255) NOT NULL,
    logs                    TEXT,
    rolled_back_at          TIMESTAMPTZ,
    started_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count     INTEGER NOT NULL DEFAULT 0
);
"""

# What aixsss-ops writes into ``logs`` when it starts a migration that runs in one transaction
# together with its success record: such a row left unfinished can only mean the run was
# interrupted and its transaction rolled back, so deploy may retry it safely.
STARTED_ATOMIC = "aixsss-ops: started; the script and this record commit in one transaction"

# Tables Prisma ignores when deciding whether a database is empty.
IGNORED_TABLES = {"spatial_ref_sys"}


@dataclass(frozen=True)
class Row:
    id: str
    checksum: str
    finished_at: datetime | None
    migration_name: str
    logs: str | None
    rolled_back_at: datetime | None
    started_at: datetime
    applied_steps_count: int

    @property
    def applied(self) -> bool:
        return self.finished_at is not None and self.rolled_back_at is None

    @property
    def unfinished(self) -> bool:
        """Started and neither finished nor rolled back: Prisma calls this a failed migration."""
        return self.finished_at is None and self.rolled_back_at is None

    @property
    def interrupted_atomically(self) -> bool:
        return self.unfinished and self.logs == STARTED_ATOMIC

    def to_dict(self) -> dict:
        return {
            "id": self.id, "migration_name": self.migration_name, "checksum": self.checksum,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "rolled_back_at": self.rolled_back_at.isoformat() if self.rolled_back_at else None,
            "applied_steps_count": self.applied_steps_count, "logs": self.logs,
        }


def exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TABLE,)).fetchone()[0]


def current_schema(conn: psycopg.Connection) -> str | None:
    return conn.execute("SELECT current_schema()").fetchone()[0]


def user_tables(conn: psycopg.Connection) -> list[str]:
    """Tables in the target schema other than the ledger (Prisma refuses to deploy onto these)."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema() ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows if r[0] != TABLE and r[0] not in IGNORED_TABLES]


def create(conn: psycopg.Connection, schema: str | None) -> None:
    """Create the ledger (and the Prisma ``?schema=`` schema when it is missing), as Prisma does."""
    from psycopg import sql

    if schema:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    conn.execute(CREATE_TABLE)


def read(conn: psycopg.Connection) -> list[Row]:
    """All rows, oldest first (as Prisma lists them)."""
    cur = conn.execute(
        "SELECT id, checksum, finished_at, migration_name, logs, rolled_back_at, started_at, applied_steps_count "
        "FROM _prisma_migrations ORDER BY started_at ASC, id ASC"
    )
    return [Row(*r) for r in cur.fetchall()]


def new_id() -> str:
    return str(uuid.uuid4())


def record_started(conn: psycopg.Connection, name: str, checksum: str, logs: str | None) -> str:
    rid = new_id()
    conn.execute(
        "INSERT INTO _prisma_migrations (id, checksum, started_at, migration_name, logs) VALUES (%s, %s, now(), %s, %s)",
        (rid, checksum, name, logs),
    )
    return rid


def record_finished(conn: psycopg.Connection, rid: str) -> None:
    """One successful step, finished now, logs cleared (Prisma leaves them NULL on success)."""
    conn.execute(
        "UPDATE _prisma_migrations SET applied_steps_count = applied_steps_count + 1, finished_at = clock_timestamp(), "
        "logs = NULL WHERE id = %s",
        (rid,),
    )


def record_failed(conn: psycopg.Connection, rid: str, logs: str) -> None:
    conn.execute("UPDATE _prisma_migrations SET logs = %s WHERE id = %s", (logs, rid))


def mark_applied(conn: psycopg.Connection, name: str, checksum: str) -> str:
    """A new row for a migration resolved as applied / baselined (Prisma: logs '', steps 0)."""
    rid = new_id()
    conn.execute(
        "INSERT INTO _prisma_migrations (id, checksum, logs, started_at, finished_at, migration_name) "
        "VALUES (%s, %s, '', clock_timestamp(), clock_timestamp(), %s)",
        (rid, checksum, name),
    )
    return rid


def mark_rolled_back(conn: psycopg.Connection, rid: str) -> None:
    conn.execute("UPDATE _prisma_migrations SET rolled_back_at = now() WHERE id = %s", (rid,))
