"""Running one migration script and recording it in the ledger.

A script that can run in a transaction is applied atomically *with* its success record:
the ``started`` row is committed first (so a crash leaves a trace), then the script and the
``finished_at`` update commit together. A run killed midway therefore leaves an unfinished
row whose transaction rolled back: never a half-recorded success, and safe to retry.

Scripts that cannot run in a transaction block (``CREATE INDEX CONCURRENTLY``, their own
``BEGIN``/``COMMIT``) run as Prisma runs every script: one simple-protocol query, recorded
before and after; an interruption then needs ``resolve``.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops.errors import OpsError
from aixsss_ops.migrate import ledger
from aixsss_ops.migrate.layout import Migration
from aixsss_ops.migrate.statements import Statement, runs_in_one_transaction, split, statement_at

if TYPE_CHECKING:
    import psycopg


# The last line of the logs aixsss-ops records for a failed run: the migrations folder it ran from (another
# release's folder, say), which `migrate resolve --applied` must be given.
FOLDER_PREFIX = "Migrations folder: "


def migrations_folder(migration: Migration) -> Path | None:
    """The (absolute) migrations folder ``migration`` was read from."""
    return migration.path.parent.parent.absolute() if migration.path is not None else None


class MigrationFailed(OpsError):
    """A migration script failed; its transaction rolled back and the ledger row holds the error (exit 1)."""

    def __init__(self, message: str, *, name: str, logs: str, hint: str | None = None):
        super().__init__(message, hint=hint, details=logs)
        self.name = name
        self.logs = logs


@dataclass(frozen=True)
class ScriptError:
    sqlstate: str | None
    message: str
    detail: str | None
    hint: str | None
    statement: Statement | None
    statement_index: int | None

    def logs(self, name: str, folder: Path | None = None) -> str:
        """The text stored in ``_prisma_migrations.logs`` (shaped like Prisma's), then the folder it ran from."""
        lines = [f"Migration `{name}` failed to apply cleanly to the database.", ""]
        if self.sqlstate:
            lines.append(f"Database error code: {self.sqlstate}")
            lines.append("")
        lines.append("Database error:")
        lines.append(f"ERROR: {self.message}")
        if self.detail:
            lines.append(f"DETAIL: {self.detail}")
        if self.hint:
            lines.append(f"HINT: {self.hint}")
        if self.statement is not None:
            lines.append("")
            lines.append(f"Failing statement (line {self.statement.line}):")
            lines.append(self.statement.text)
        if folder is not None:
            lines += ["", f"{FOLDER_PREFIX}{folder}"]
        return "\n".join(lines)


def _run_script(conn: psycopg.Connection, script: str, statements: list[Statement]) -> ScriptError | None:
    """Send the whole script as one simple query; on error, name the failing statement."""
    from psycopg import errors, generators, pq

    pgconn = conn.pgconn
    with conn.lock:
        pgconn.send_query(script.encode("utf-8"))
        results = conn.wait(generators.execute(pgconn))
    for done, res in enumerate(results):
        if res.status == pq.ExecStatus.FATAL_ERROR:
            err = errors.error_from_result(res, encoding="utf-8")
            diag = err.diag
            stmt = None
            if diag.statement_position:
                stmt = statement_at(statements, int(diag.statement_position) - 1)
            elif done < len(statements):
                stmt = statements[done]
            return ScriptError(diag.sqlstate, diag.message_primary or str(err).strip(), diag.message_detail,
                               diag.message_hint, stmt, statements.index(stmt) if stmt in statements else None)
    return None


def apply_migration(conn: psycopg.Connection, migration: Migration, retry_ids: list[str] = ()) -> bool:
    """Apply one migration and record it. Returns whether it ran atomically. Raises MigrationFailed.

    ``conn`` is in autocommit mode and holds the migration lock; ``retry_ids`` are unfinished rows
    of this migration (interrupted atomic runs) to mark rolled back first.
    """
    import psycopg

    script = migration.sql
    statements = split(script)
    atomic = runs_in_one_transaction(statements)
    with conn.transaction():
        # The started row is informational: an asynchronous commit saves a WAL flush, and the
        # script's own (synchronous) commit below flushes it anyway.
        conn.execute("SET LOCAL synchronous_commit = off")
        for rid in retry_ids:
            ledger.mark_rolled_back(conn, rid)
        rid = ledger.record_started(conn, migration.name, migration.checksum, ledger.STARTED_ATOMIC if atomic else None)
    failure: ScriptError | None = None
    if atomic:
        try:
            with conn.transaction():
                failure = _run_script(conn, script, statements)
                if failure is not None:
                    raise _Rollback()
                ledger.record_finished(conn, rid)
        except _Rollback:
            pass
    else:
        failure = _run_script(conn, script, statements)
        if failure is None:
            ledger.record_finished(conn, rid)
    if failure is None:
        return atomic
    folder = migrations_folder(migration)
    logs = failure.logs(migration.name, folder)
    with suppress(psycopg.Error):  # the connection may be gone: the row then stays unfinished
        ledger.record_failed(conn, rid, logs)
    where = f" at line {failure.statement.line}" if failure.statement else ""
    stmt = f": {failure.statement.normalized[:200]}" if failure.statement else ""
    raise MigrationFailed(
        f"migration {migration.name} failed{where}: {failure.message}"
        + (f" (SQLSTATE {failure.sqlstate})" if failure.sqlstate else "") + stmt,
        name=migration.name,
        logs=logs,
        hint=(f"nothing of it was applied (rolled back). Fix the script or the data, then run "
              f"`aixsss-ops migrate resolve --rolled-back {migration.name}` and deploy again"
              if atomic else
              f"it ran outside a transaction: check what it changed, complete or undo it by hand, then run "
              f"`aixsss-ops migrate resolve --applied {migration.name}"
              + (f" --migrations-dir {folder}" if folder else "") + f"` or `--rolled-back {migration.name}`"),
    )


class _Rollback(Exception):
    """Leaves ``conn.transaction()`` rolling back without the error being a Python exception."""
