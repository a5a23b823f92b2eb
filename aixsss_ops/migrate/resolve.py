"""``migrate resolve`` and ``migrate baseline``: Prisma's recovery semantics (rows are never deleted)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops.dburl import parse_database_url
from aixsss_ops.errors import CheckFailed, UsageError
from aixsss_ops.migrate import ledger, lock
from aixsss_ops.migrate.layout import read_layout
from aixsss_ops.migrate.session import connect


@dataclass
class ResolveResult:
    database: str
    action: str  # "applied" | "rolled-back" | "baseline"
    migrations: list[str] = field(default_factory=list)
    rolled_back_rows: list[str] = field(default_factory=list)
    new_rows: list[str] = field(default_factory=list)
    created_ledger: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_applied(database_url: str, migrations_dir: Path, name: str, *, lock_timeout: float = 60.0) -> ResolveResult:
    """Record ``name`` as applied without running it: unfinished rows get rolled_back_at, a new row is added."""
    layout = read_layout(Path(migrations_dir))
    migration = layout.get(name)
    if migration is None:
        raise UsageError(f"migration {name} is not in {layout.directory}",
                         hint="`aixsss-ops migrate status` lists the migration names")
    target = parse_database_url(database_url)
    result = ResolveResult(target.masked, "applied", [name])
    with connect(target) as conn:
        lock.acquire(conn, lock_timeout)
        if not ledger.exists(conn):
            ledger.create(conn, target.schema)
            result.created_ledger = True
        mine = [r for r in ledger.read(conn) if r.migration_name == name]
        if any(r.applied for r in mine):
            raise CheckFailed(f"migration {name} is already recorded as applied", hint="nothing to resolve")
        with conn.transaction():
            for r in mine:
                if r.unfinished:
                    ledger.mark_rolled_back(conn, r.id)
                    result.rolled_back_rows.append(r.id)
            result.new_rows.append(ledger.mark_applied(conn, name, migration.checksum))
    return result


def resolve_rolled_back(database_url: str, name: str, *, lock_timeout: float = 60.0) -> ResolveResult:
    """Mark the failed run(s) of ``name`` rolled back, so that deploy applies it again."""
    target = parse_database_url(database_url)
    result = ResolveResult(target.masked, "rolled-back", [name])
    with connect(target) as conn:
        lock.acquire(conn, lock_timeout)
        mine = [r for r in ledger.read(conn) if r.migration_name == name] if ledger.exists(conn) else []
        failed = [r for r in mine if r.unfinished]
        if not failed:
            state = "applied" if any(r.applied for r in mine) else "not recorded" if not mine else "already rolled back"
            raise CheckFailed(f"migration {name} cannot be marked rolled back: it is not in a failed state ({state})")
        with conn.transaction():
            for r in failed:
                ledger.mark_rolled_back(conn, r.id)
                result.rolled_back_rows.append(r.id)
    return result


def baseline(
    database_url: str, migrations_dir: Path, up_to: str | None = None, *, lock_timeout: float = 60.0
) -> ResolveResult:
    """Record the folder's migrations (through ``up_to``) as applied on an existing, unmanaged database."""
    layout = read_layout(Path(migrations_dir))
    names = layout.names
    if not names:
        raise UsageError(f"{layout.directory} holds no migrations to baseline")
    if up_to is not None:
        if up_to not in names:
            raise UsageError(f"migration {up_to} is not in {layout.directory}")
        names = names[: names.index(up_to) + 1]
    target = parse_database_url(database_url)
    result = ResolveResult(target.masked, "baseline", names)
    with connect(target) as conn:
        lock.acquire(conn, lock_timeout)
        if ledger.exists(conn):
            recorded = [r for r in ledger.read(conn) if r.applied or r.unfinished]
            if recorded:
                raise CheckFailed(
                    f"the database already has a migration history ({len(recorded)} recorded migrations); "
                    "baseline is for databases not yet managed",
                    hint="use `aixsss-ops migrate resolve --applied NAME` for single migrations",
                )
        with conn.transaction():
            if not ledger.exists(conn):
                ledger.create(conn, target.schema)
                result.created_ledger = True
            for n in names:
                result.new_rows.append(ledger.mark_applied(conn, n, layout.get(n).checksum))
    return result
