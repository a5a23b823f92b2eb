"""Running one migration script and recording it in the ledger.

A script that can run in a transaction is applied atomically *with* its success record:
the ``started`` row is committed first (so a crash leaves a trace), then the script and the
``finished_at`` update commit together. A run killed midway therefore leaves an unfinished
row whose transaction rolled back: never a half-recorded success, and safe to retry.

Scripts that cannot run in a transaction block (``CREATE INDEX CONCURRENTLY``, their own
``BEGIN``/``COMMIT``) run as Prisma runs every script: one simple-protocol query, recorded
before and after; an interruption then needs ``resolve``.

Every script runs with a ``lock_timeout``: an ``ALTER TABLE`` queued behind a long transaction
would otherwise wait forever, and every query of the live app on that table would queue behind
it. A statement that gives up waiting fails the migration like any failing statement, naming
the sessions that hold the table; a script run in one transaction is then recorded as rolled
back too (nothing of it was applied), so the next deploy simply tries it again.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops.errors import OpsError
from aixsss_ops.migrate import ledger, lock
from aixsss_ops.migrate.layout import Migration
from aixsss_ops.migrate.statements import Statement, runs_in_one_transaction, split, statement_at

if TYPE_CHECKING:
    import psycopg


# The last line of the logs aixsss-ops records for a failed run: the migrations folder it ran from (another
# release's folder, say), which `migrate resolve --applied` must be given.
FOLDER_PREFIX = "Migrations folder: "

# Seconds a migration statement waits for a lock (``lock_timeout``) before the migration fails, rolled back; the
# default of ``deploy.migration_statement_lock_timeout``. 0: no limit.
STATEMENT_LOCK_TIMEOUT = 5.0
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout (or NOWAIT) expiring


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

    @property
    def lock_timed_out(self) -> bool:
        return self.sqlstate == LOCK_NOT_AVAILABLE

    def logs(self, name: str, folder: Path | None = None, notes: list[str] = ()) -> str:
        """The text stored in ``_prisma_migrations.logs`` (shaped like Prisma's), then ``notes`` and the folder it
        ran from."""
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
        if notes:
            lines += ["", *notes]
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


def _lock_timeout_ms(seconds: float) -> int:
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def apply_migration(conn: psycopg.Connection, migration: Migration, retry_ids: list[str] = (),
                    lock_timeout: float = STATEMENT_LOCK_TIMEOUT) -> bool:
    """Apply one migration and record it. Returns whether it ran atomically. Raises MigrationFailed.

    ``conn`` is in autocommit mode and holds the migration lock; ``retry_ids`` are unfinished rows
    of this migration (interrupted atomic runs) to mark rolled back first. The script's statements
    wait at most ``lock_timeout`` seconds for each lock (0: no limit); a script may set its own.
    """
    import psycopg

    script = migration.sql
    statements = split(script)
    atomic = runs_in_one_transaction(statements)
    timeout_ms = _lock_timeout_ms(lock_timeout)
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
                conn.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
                failure = _run_script(conn, script, statements)
                if failure is not None:
                    raise _Rollback()
                ledger.record_finished(conn, rid)
        except _Rollback:
            pass
    else:
        conn.execute(f"SET lock_timeout = {timeout_ms}")
        try:
            failure = _run_script(conn, script, statements)
        finally:
            with suppress(psycopg.Error):
                conn.execute("RESET lock_timeout")
        if failure is None:
            ledger.record_finished(conn, rid)
    if failure is None:
        return atomic
    folder = migrations_folder(migration)
    if failure.lock_timed_out:
        _lock_failure(conn, migration, rid, failure, atomic, lock_timeout, folder)
    logs = failure.logs(migration.name, folder)
    with suppress(psycopg.Error):  # the connection may be gone: the row then stays unfinished
        ledger.record_failed(conn, rid, logs)
    raise MigrationFailed(
        _failure_message(migration, failure),
        name=migration.name,
        logs=logs,
        hint=(f"nothing of it was applied (rolled back). Fix the script or the data, then run "
              f"`aixsss-ops migrate resolve --rolled-back {migration.name}` and deploy again"
              if atomic else _non_atomic_hint(migration.name, folder)),
    )


def _failure_message(migration: Migration, failure: ScriptError) -> str:
    where = f" at line {failure.statement.line}" if failure.statement else ""
    stmt = f": {failure.statement.normalized[:200]}" if failure.statement else ""
    return (f"migration {migration.name} failed{where}: {failure.message}"
            + (f" (SQLSTATE {failure.sqlstate})" if failure.sqlstate else "") + stmt)


def _non_atomic_hint(name: str, folder: Path | None) -> str:
    return (f"it ran outside a transaction: check what it changed, complete or undo it by hand, then run "
            f"`aixsss-ops migrate resolve --applied {name}"
            + (f" --migrations-dir {folder}" if folder else "") + f"` or `--rolled-back {name}`")


def _lock_failure(conn: psycopg.Connection, migration: Migration, rid: str, failure: ScriptError, atomic: bool,
                  lock_timeout: float, folder: Path | None) -> None:
    """A statement gave up waiting for a lock: name who holds it, record the run, raise MigrationFailed.

    An atomic run is recorded failed (its error in ``logs``) *and* rolled back in one update: its transaction
    rolled back, so nothing of it is in the database, and the next deploy (or Prisma's) applies it again.
    """
    import psycopg

    try:
        holders = lock.relation_holders(conn, failure.statement.text if failure.statement else None)
    except psycopg.Error:
        holders = []
    shown = [h.describe() for h in holders[:3]] + ([f"{len(holders) - 3} more"] if len(holders) > 3 else [])
    who = "; ".join(shown) if shown else "a session that has released it since"
    logs = failure.logs(migration.name, folder, [f"Blocked by: {d}" for d in shown])
    # the connection may be gone: the row then stays unfinished
    with suppress(psycopg.Error), conn.transaction():
        ledger.record_failed(conn, rid, logs)
        if atomic:
            ledger.mark_rolled_back(conn, rid)
    waited = f"{lock_timeout:g}s" if lock_timeout > 0 else "its own lock_timeout"
    pid = str(holders[0].pid) if len(holders) == 1 else "PID"
    if atomic:
        hint = (f"nothing of it was applied (rolled back, and recorded as rolled back): it can be retried as it is. "
                f"Run the deploy again once that session has finished its transaction (or end it: "
                f"SELECT pg_terminate_backend({pid})), or allow a longer wait "
                f"(deploy.migration_statement_lock_timeout)")
    else:
        hint = ("a statement waited too long for a lock held by another session; " + _non_atomic_hint(
            migration.name, folder) + ", then run the deploy again once that session has finished")
    raise MigrationFailed(
        f"{_failure_message(migration, failure)} — gave up after waiting {waited} for a lock held by {who}",
        name=migration.name, logs=logs, hint=hint,
    )


class _Rollback(Exception):
    """Leaves ``conn.transaction()`` rolling back without the error being a Python exception."""
