"""``migrate deploy``: plan, then apply pending migrations under Prisma's advisory lock."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import CheckFailed
from aixsss_ops.migrate import ledger, lock
from aixsss_ops.migrate.apply import FOLDER_PREFIX, STATEMENT_LOCK_TIMEOUT, apply_migration
from aixsss_ops.migrate.history import (
    APPLIED,
    FAILED,
    INTERRUPTED,
    MISSING,
    MODIFIED,
    PENDING,
    RUNNING,
    Entry,
    History,
    compare,
)
from aixsss_ops.migrate.layout import SCRIPT, Layout, read_layout
from aixsss_ops.migrate.lint import Finding, blocking, lint
from aixsss_ops.migrate.session import connect, table_rows

Progress = Callable[[str], None]


@dataclass
class DeployResult:
    database: str  # masked URL
    migrations_dir: str
    plan: list[str] = field(default_factory=list)  # migrations to apply, in order
    applied: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)  # interrupted runs applied again
    already_applied: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    blockers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    created_ledger: bool = False
    dry_run: bool = False
    lock_waited_s: float = 0.0
    duration_s: float = 0.0
    backup_id: str | None = None

    @property
    def ok(self) -> bool:
        return not self.blockers

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["findings"] = [f.to_dict() for f in self.findings]
        d["ok"] = self.ok
        return d


def failed_hint(name: str, migrations_dir: Path | None, current: Path | None = None) -> str:
    """How to get past a failed migration. ``migrations_dir``: the folder holding it that ``resolve --applied``
    must read (None when no known folder holds it: ``current``, this run's folder, does not)."""
    where = (f"--migrations-dir {migrations_dir}` " if migrations_dir is not None
             else f"--migrations-dir DIR` (DIR: the migrations folder that holds {name}; {current} does not) ")
    return (f"Fix the database, then run `aixsss-ops migrate resolve --rolled-back {name}` to apply it again, "
            f"or `aixsss-ops migrate resolve --applied {name} {where}"
            "if you completed it by hand")


def failed_folder(entry: Entry, layout: Layout) -> Path | None:
    """The migrations folder a failed migration ran from (recorded in its logs: another release's folder, say) while
    it still holds the migration; else this run's folder when it holds it; else None."""
    for line in reversed((entry.logs or "").splitlines()):
        if line.startswith(FOLDER_PREFIX):
            recorded = Path(line[len(FOLDER_PREFIX):])
            if (recorded / entry.name / SCRIPT).is_file():
                return recorded
            break
    return layout.directory.absolute() if entry.in_folder else None


def make_plan(
    layout: Layout, hist: History, result: DeployResult, *, allow_drift: bool, allow_destructive: bool,
    sizes: dict[str, float] | None,
) -> list[str]:
    """Fill ``result`` with the plan and what stops it; returns the names to apply."""
    for e in hist.entries:
        if e.state == FAILED:
            first = (e.logs or "").strip().splitlines()
            why = next((ln for ln in first if ln.startswith("ERROR:")), first[0] if first else "no error was recorded")
            result.blockers.append(
                f"migration {e.name} is recorded as failed (started {e.started_at}): {why}. "
                + failed_hint(e.name, failed_folder(e, layout), layout.directory.absolute())
            )
        elif e.state == RUNNING:
            result.blockers.append(f"migration {e.name} is being applied by another session right now")
        elif e.state == MODIFIED:
            result.drift.append(e.name)
            msg = (f"migration {e.name} was modified after it was applied (checksum {e.checksum} in the folder, "
                   f"{e.recorded_checksum} in the database)")
            if allow_drift:
                result.warnings.append(msg + "; ignored (--allow-drift)")
            else:
                result.blockers.append(msg + "; restore the file, or pass --allow-drift")
        elif e.state == MISSING:
            result.missing.append(e.name)
            result.warnings.append(f"migration {e.name} is applied in the database but absent from {layout.directory}")
    todo = [e.name for e in hist.entries if e.in_folder and e.state in (PENDING, INTERRUPTED)]
    applied_names = [e.name for e in hist.entries if e.in_folder and e.state in (APPLIED, MODIFIED)]
    result.already_applied = applied_names
    if todo and applied_names and todo[0] < max(applied_names):
        result.warnings.append(f"{todo[0]} sorts before already-applied migrations; it is applied now, out of order")
    result.plan = todo
    result.retried = [n for n in todo if hist.entry(n).state == INTERRUPTED]
    for n in result.retried:
        result.warnings.append(f"migration {n} was interrupted earlier (its transaction rolled back); it is applied again")
    # Findings on what an earlier pending migration creates, or on a database no migration was applied to yet, are
    # notes (info): the running color cannot use what does not exist yet, and no color runs on an empty database.
    nothing_applied = not any(e.state in (APPLIED, MODIFIED, MISSING) for e in hist.entries)
    result.findings = lint([layout.get(n) for n in todo], sizes, pending_batch=True, empty_database=nothing_applied)
    bad = blocking(result.findings)
    if bad:
        summary = "; ".join(f"{f.migration} line {f.line}: {f.rule}" for f in bad)
        if allow_destructive:
            result.warnings.append(f"destructive statements allowed (--allow-destructive): {summary}")
        else:
            result.blockers.append(
                f"{len(bad)} pending statement(s) would break the running color or lose data ({summary}); "
                "review `aixsss-ops migrate lint`, then pass --allow-destructive"
            )
    return todo


def deploy(
    database_url: str,
    migrations_dir: Path,
    *,
    allow_drift: bool = False,
    allow_destructive: bool = False,
    lock_timeout: float = 60.0,
    statement_lock_timeout: float = STATEMENT_LOCK_TIMEOUT,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> DeployResult:
    """Apply every pending migration of ``migrations_dir`` in lexical order, each in its own transaction.

    ``lock_timeout``: seconds to wait for the migration lock (another deploy); ``statement_lock_timeout``: seconds
    each statement of a migration waits for a table or row lock before the migration fails, rolled back (0: no limit).

    Raises LayoutError (bad folder), ServiceUnavailable (database down), LockTimeout,
    CheckFailed (failed/modified migrations, destructive findings, unmanaged non-empty database)
    or MigrationFailed. With ``dry_run`` nothing changes and the blockers are returned, not raised.
    """
    started = time.monotonic()
    say = progress or (lambda _m: None)
    layout = read_layout(Path(migrations_dir))
    target = parse_database_url(database_url)
    result = DeployResult(database=target.masked, migrations_dir=str(layout.directory), dry_run=dry_run)
    with connect(target) as conn:
        if not dry_run:
            result.lock_waited_s = lock.acquire(conn, lock_timeout, say)
        try:
            if not ledger.exists(conn):
                tables = ledger.user_tables(conn)
                if tables:
                    shown = ", ".join(tables[:5]) + (", …" if len(tables) > 5 else "")
                    result.blockers.append(
                        f"the database schema is not empty ({len(tables)} tables: {shown}) and has no "
                        f"{ledger.TABLE} table: it is not managed by Prisma Migrate yet. Run "
                        f"`aixsss-ops migrate baseline --migrations-dir {layout.directory}` to record the migrations "
                        "it already contains (add --up-to NAME if it is behind)"
                    )
                elif not dry_run:
                    ledger.create(conn, target.schema)
                    result.created_ledger = True
                rows = []
            else:
                rows = ledger.read(conn)
            other = dry_run and lock.holder(conn) is not None
            hist = compare(layout, rows, lock_held_by_other=other)
            todo = make_plan(layout, hist, result, allow_drift=allow_drift, allow_destructive=allow_destructive,
                             sizes=table_rows(conn))
            if dry_run:
                return result
            if result.blockers:
                raise CheckFailed(
                    result.blockers[0] if len(result.blockers) == 1
                    else f"{len(result.blockers)} problems stop the deploy: {result.blockers[0]}",
                    details="\n".join(result.blockers[1:]) or None,
                )
            unfinished = {r.migration_name: [] for r in rows}
            for r in rows:
                if r.unfinished:
                    unfinished[r.migration_name].append(r.id)
            for i, name in enumerate(todo, 1):
                say(f"applying {name} ({i}/{len(todo)})")
                apply_migration(conn, layout.get(name), unfinished.get(name, []), statement_lock_timeout)
                result.applied.append(name)
        finally:
            result.duration_s = round(time.monotonic() - started, 3)
            # the session lock goes with the connection, which connect() closes
    return result
