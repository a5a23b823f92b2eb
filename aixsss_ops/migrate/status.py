"""``migrate status``: what the database holds compared with the migrations folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.dburl import parse_database_url
from aixsss_ops.migrate import ledger, lock
from aixsss_ops.migrate.history import (
    APPLIED,
    FAILED,
    INTERRUPTED,
    MISSING,
    MODIFIED,
    PENDING,
    PROBLEM_STATES,
    RUNNING,
    Entry,
    compare,
)
from aixsss_ops.migrate.layout import read_layout
from aixsss_ops.migrate.session import connect

STATES = (APPLIED, PENDING, FAILED, INTERRUPTED, RUNNING, MODIFIED, MISSING)


@dataclass
class StatusReport:
    database: str
    migrations_dir: str
    ledger_exists: bool
    unmanaged_tables: list[str] = field(default_factory=list)  # non-empty schema without a ledger
    lock_holder: str | None = None
    entries: list[Entry] = field(default_factory=list)

    def names(self, state: str) -> list[str]:
        return [e.name for e in self.entries if e.state == state]

    @property
    def needs_baseline(self) -> bool:
        return not self.ledger_exists and bool(self.unmanaged_tables)

    @property
    def ok(self) -> bool:
        """Up to date: nothing pending, failed, interrupted, modified or missing."""
        return not self.needs_baseline and not any(e.state in PROBLEM_STATES for e in self.entries)

    @property
    def counts(self) -> dict[str, int]:
        return {s: len(self.names(s)) for s in STATES}

    def to_dict(self) -> dict:
        return {
            "ok": self.ok, "database": self.database, "migrations_dir": self.migrations_dir,
            "ledger_exists": self.ledger_exists, "needs_baseline": self.needs_baseline,
            "unmanaged_tables": self.unmanaged_tables, "lock_holder": self.lock_holder,
            "counts": self.counts, **{s: self.names(s) for s in STATES},
            "migrations": [e.to_dict() for e in self.entries],
        }


def status(database_url: str, migrations_dir: Path) -> StatusReport:
    layout = read_layout(Path(migrations_dir))
    target = parse_database_url(database_url)
    with connect(target) as conn:
        exists = ledger.exists(conn)
        rows = ledger.read(conn) if exists else []
        held = lock.holder(conn)
        report = StatusReport(target.masked, str(layout.directory), exists, lock_holder=held.describe() if held else None)
        if not exists:
            report.unmanaged_tables = ledger.user_tables(conn)
    report.entries = compare(layout, rows, lock_held_by_other=held is not None).entries
    return report
