"""Comparing the migrations folder with the ledger: what is applied, pending, failed, modified."""

from __future__ import annotations

from dataclasses import dataclass, field

from aixsss_ops.migrate.layout import Layout
from aixsss_ops.migrate.ledger import Row

APPLIED = "applied"
PENDING = "pending"
FAILED = "failed"  # unfinished with an error logged, or unfinished and not known to be rolled back
INTERRUPTED = "interrupted"  # unfinished, its transaction rolled back: deploy retries it
RUNNING = "running"  # unfinished while another session holds the migration lock
MODIFIED = "modified"  # applied, but the file's checksum changed since
MISSING = "missing"  # recorded in the database, absent from the folder

PROBLEM_STATES = {PENDING, FAILED, INTERRUPTED, RUNNING, MODIFIED, MISSING}


@dataclass
class Entry:
    name: str
    state: str
    in_folder: bool
    checksum: str | None = None  # of the file
    recorded_checksum: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    logs: str | None = None
    rows: int = 0  # ledger rows for this name (rolled back ones included)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class History:
    entries: list[Entry] = field(default_factory=list)

    def names(self, *states: str) -> list[str]:
        return [e.name for e in self.entries if e.state in states]

    def entry(self, name: str) -> Entry | None:
        return next((e for e in self.entries if e.name == name), None)


def _iso(ts) -> str | None:
    return ts.isoformat() if ts is not None else None


def compare(layout: Layout, rows: list[Row], *, lock_held_by_other: bool = False) -> History:
    """Classify every migration of the folder and every name recorded only in the ledger."""
    by_name: dict[str, list[Row]] = {}
    for r in rows:
        by_name.setdefault(r.migration_name, []).append(r)
    entries: list[Entry] = []
    for m in layout.migrations:
        mine = by_name.get(m.name, [])
        applied = [r for r in mine if r.applied]
        unfinished = [r for r in mine if r.unfinished]
        e = Entry(m.name, PENDING, True, checksum=m.checksum, rows=len(mine))
        if applied:
            last = applied[-1]
            e.state = APPLIED if m.matches(last.checksum) else MODIFIED
            e.recorded_checksum, e.started_at, e.finished_at = last.checksum, _iso(last.started_at), _iso(last.finished_at)
        elif unfinished:
            last = unfinished[-1]
            if lock_held_by_other:
                e.state = RUNNING
            elif all(r.interrupted_atomically for r in unfinished):
                e.state = INTERRUPTED
            else:
                e.state = FAILED
            e.recorded_checksum, e.started_at, e.logs = last.checksum, _iso(last.started_at), last.logs
        entries.append(e)
    folder = set(layout.names)
    for name in sorted(by_name):
        if name in folder:
            continue
        mine = by_name[name]
        applied = [r for r in mine if r.applied]
        unfinished = [r for r in mine if r.unfinished]
        if not applied and not unfinished:
            continue  # only rolled-back rows: nothing in the database depends on the file
        last = (applied or unfinished)[-1]
        state = MISSING if applied else (RUNNING if lock_held_by_other else FAILED)
        entries.append(Entry(name, state, False, recorded_checksum=last.checksum, started_at=_iso(last.started_at),
                             finished_at=_iso(last.finished_at), logs=last.logs, rows=len(mine)))
    return History(entries)
