"""Connecting for migrations: Prisma URL translated, named in pg_stat_activity, dead clients noticed."""

from __future__ import annotations

from contextlib import contextmanager, suppress

from aixsss_ops.dburl import PgTarget, parse_database_url
from aixsss_ops.migrate.lock import APPLICATION_NAME

CONNECT_TIMEOUT = 5.0


@contextmanager
def connect(database_url: str | PgTarget, timeout: float = CONNECT_TIMEOUT):
    """An autocommit connection; raises ServiceUnavailable (one line, masked URL) when the server is down."""
    import psycopg

    target = database_url if isinstance(database_url, PgTarget) else parse_database_url(database_url)
    conn = target.connect(timeout=timeout, autocommit=True, application_name=APPLICATION_NAME)
    # PostgreSQL >= 14: a backend whose client died (SIGKILL of this process) aborts its transaction
    # and frees the migration lock within a second, instead of finishing a long statement first.
    with suppress(psycopg.Error):
        conn.execute("SET client_connection_check_interval = 1000")
    try:
        yield conn
    finally:
        with suppress(Exception):
            conn.close()


_ROWS_SQL = (
    "SELECT c.relname, CASE WHEN c.reltuples >= 0 THEN c.reltuples ELSE {size} / 100.0 END "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname = current_schema()"
)


def table_rows(conn, lock_wait: float = 1.0) -> dict[str, float]:
    """Estimated rows per table of the target schema (for the index lint rule).

    A table never analyzed is sized by ``pg_relation_size``, which takes its ACCESS SHARE lock: when another session
    holds the table exclusively for longer than ``lock_wait`` seconds, the planner's statistics (``relpages``) size
    it instead, rather than the deploy waiting for that session.
    """
    import psycopg

    try:
        with conn.transaction():
            conn.execute(f"SET LOCAL lock_timeout = {max(1, round(lock_wait * 1000))}")
            rows = conn.execute(_ROWS_SQL.format(size="pg_relation_size(c.oid)")).fetchall()
    except psycopg.errors.LockNotAvailable:
        rows = conn.execute(_ROWS_SQL.format(size="c.relpages::float8 * current_setting('block_size')::int")).fetchall()
    return {name: float(n) for name, n in rows}
