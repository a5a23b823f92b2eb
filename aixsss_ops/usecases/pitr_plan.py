"""What ``restore --to-time T`` would do (``--dry-run``) and what it checks before it changes anything: T and the
base backup it needs, the WAL switched and archived (the window's end, the timelines), the objects' plan.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aixsss_ops.backup import objects
from aixsss_ops.backup import pitr as engine_mod
from aixsss_ops.backup.pitr import BaseBackup, Engine, Info, Window, iso
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import CheckFailed, OpsError, UsageError
from aixsss_ops.usecases.backup import database
from aixsss_ops.usecases.pitr import engine


@dataclass
class PitrPlan:
    target: datetime
    backup: BaseBackup
    timeline: int | None
    window: Window
    wal_segments: int  # archived segments from the base backup's start on: replay reads at most these
    wal_bytes: int
    objects: objects.ObjectPlan | None
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"target": iso(self.target), "base_backup": self.backup.to_dict(), "timeline": self.timeline,
                "window": self.window.to_dict(), "wal_segments_at_most": self.wal_segments,
                "wal_bytes_at_most": self.wal_bytes, "objects": self.objects.to_dict() if self.objects else None,
                "steps": self.steps, "warnings": self.warnings}


def marker(dep: Deployment) -> bool:
    """A committed transaction after T and a switched, archived WAL segment: replay to any T <= now then finds a
    commit past T and stops there instead of running out of WAL before reaching it."""
    import psycopg

    from aixsss_ops.backup.postgres import admin_target

    try:
        with admin_target(database(dep)).connect(timeout=5) as c:
            c.execute("SELECT pg_catalog.txid_current()")
        return True
    except (OpsError, psycopg.Error):  # not reachable, or read-only (a cluster still in recovery)
        return False


HISTORY_WAIT_S = 30.0  # a promoted cluster archives its timeline's history file within a second or two


def live(dep: Deployment) -> int:
    """The live cluster's timeline; CheckFailed, before anything changes, when the live database does not answer
    (no commit after T could be archived: replay would stop short of T) or its WAL archiving fails now (the
    archiver's last failure newer than its last success: the WAL since is not in the repository)."""
    import psycopg

    from aixsss_ops.backup.postgres import admin_target

    try:
        with admin_target(database(dep)).connect(timeout=5) as c:
            tl = c.execute(
                "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN (SELECT timeline_id FROM "
                "pg_catalog.pg_control_checkpoint()) ELSE ('x' || substr(pg_catalog.pg_walfile_name("
                "pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int END").fetchone()[0]
            failing = c.execute(
                "SELECT last_failed_wal, last_failed_time, last_archived_time FROM pg_catalog.pg_stat_archiver "
                "WHERE last_failed_time > coalesce(last_archived_time, '-infinity')").fetchone()
    except (OpsError, psycopg.Error) as e:
        said = (e.message if isinstance(e, OpsError) else str(e)).strip().splitlines()
        raise CheckFailed(f"the live database does not answer ({said[0] if said else type(e).__name__}): a restore "
                          "needs it to commit and archive a transaction after T",
                          hint="start it (`aixsss-ops stack up`; `aixsss-ops stack logs postgres`), then restore "
                               "again") from None
    if failing:
        wal, failed_at, archived_at = failing
        raise CheckFailed(f"WAL archiving fails now: the archiver last failed at {iso(failed_at)} on {wal}, last "
                          f"archived at {iso(archived_at) if archived_at else 'never'}: WAL since is not in the "
                          "repository", hint="see pgBackRest's log; `aixsss-ops doctor --only backup.pitr-archiving`")
    return int(tl)


def _archive_of(eng: Engine, info: Info, timeline: int) -> tuple[list[engine_mod.WalFile], dict[int, datetime]]:
    """The archive listed once the history file of the live ``timeline`` is in it (a restore begins a timeline and
    archives its history file just after the promotion), waiting at most HISTORY_WAIT_S."""
    deadline = time.monotonic() + HISTORY_WAIT_S
    while True:
        files, timelines = eng.wal_files(info.archive_id)
        if timeline <= 1 or timeline in timelines or not info.archive_id:
            return files, timelines
        if time.monotonic() >= deadline:
            raise OpsError(f"the history file of the live timeline {timeline} ({timeline:08X}.history) is not in the "
                           f"archive after {HISTORY_WAIT_S:.0f} s: the timeline live at T cannot be told",
                           hint="its archiving fails: `aixsss-ops doctor --only backup.pitr-archiving`")
        time.sleep(0.25)


def start(dep: Deployment, target_text: str, eng: Engine, now: datetime,
          with_database: bool = True) -> tuple[datetime, Info, BaseBackup]:
    """The target and the base backup it needs, from ``pgbackrest info`` and the archive's listing: a T in the
    future, before the oldest base backup, with none, or needing archived WAL that is missing is refused (exit 2),
    as is a base backup not on the history of the timeline live at T. ``with_database``: the database is restored, so
    the live one must answer and archive (``live``), named before the window is read."""
    target = engine_mod.parse_target(target_text, now)
    live_tl = live(dep) if with_database else 1
    info = eng.info()
    if not info.exists or not info.backups:
        raise UsageError(f"{iso(target)} is outside the point-in-time recovery window (empty: no base backup yet)",
                         hint="take one: `aixsss-ops backup base`")
    files, timelines = _archive_of(eng, info, live_tl)
    gap = eng.gap(info, files, timelines)
    win = engine_mod.window(info, engine_mod.newest_wal(files), gap)
    if target > now:
        raise UsageError(f"{iso(target)} is in the future; the window is "
                         f"{engine_mod.window(info, now, gap).text()}")
    if not with_database:  # the objects alone: no base backup is restored, no WAL replayed
        return target, info, engine_mod.choose_backup(info, target)
    tl = engine_mod.timeline_at(timelines, target)
    hist = eng.history(info.archive_id, tl)
    chosen = engine_mod.choose_backup(info, target, tl, hist, gap)  # refuses T before the oldest base backup
    missing = engine_mod.missing_wal(files, chosen.wal_start, tl, hist, until=target)
    if missing:
        first, last = missing[0]
        raise UsageError(f"{iso(target)} cannot be restored: archived WAL is missing between base backup "
                         f"{chosen.label} and it ({first}" + (f" .. {last}" if last != first else "")
                         + f"); the point-in-time recovery window is {win.text()}",
                         hint="pick a time inside the window (`aixsss-ops backup list` shows it)")
    return target, info, chosen


@dataclass
class Archived:
    files: list[engine_mod.WalFile]
    timelines: dict[int, datetime]
    window: Window
    warnings: list[str]


def archived(dep: Deployment, eng: Engine, info: Info, target: datetime) -> Archived:
    """The WAL switched and archived (everything committed up to now is in the repository), then the archive
    listed: the window's end, the timelines; a T past the end is refused. Archiving that fails now (the check)
    is a warning: what was archived before still restores, and a T past it is refused by the window."""
    warnings = []
    if marker(dep):
        try:
            eng.check()
        except OpsError as e:
            warnings.append(f"WAL archiving fails now ({e.message}): only WAL archived before it can be replayed")
    else:
        warnings.append("the live database does not answer: WAL not yet archived cannot be replayed")
    files, timelines = eng.wal_files(info.archive_id)
    win = engine_mod.window(info, engine_mod.newest_wal(files), eng.gap(info, files, timelines))
    if win.end is not None and target > win.end + timedelta(seconds=1):  # repository times are whole seconds
        raise UsageError(f"{iso(target)} is outside the point-in-time recovery window ({win.text()})")
    return Archived(files, timelines, win, warnings)


def object_plan(dep: Deployment, target: datetime) -> objects.ObjectPlan:
    """What rewinds the bucket to ``target``; versions of T that no longer exist are refused (CheckFailed)."""
    _snap, obj_plan = objects.rewind_plan(dep.s3, dep.bucket, target)
    if obj_plan.missing:
        raise CheckFailed(f"{len(obj_plan.missing)} object version(s) of {iso(target)} no longer exist in "
                          f"{obj_plan.bucket} (expired?), e.g. "
                          + ", ".join(f"{m['key']}@{m['version_id']}" for m in obj_plan.missing[:3]),
                          hint="check the bucket's lifecycle rule against backup.pitr_retention_days (doctor)")
    return obj_plan


class StoreDown(CheckFailed):
    """The object store does not answer: the objects cannot be rewound to T."""


def objects_at(dep: Deployment, target: datetime) -> tuple[objects.ObjectPlan | None, str | None]:
    """``object_plan``; StoreDown (a CheckFailed: nothing is changed) when the store does not answer, naming
    ``--db-only``, which restores the database alone."""
    try:
        return object_plan(dep, target), None
    except CheckFailed:
        raise
    except OpsError as e:
        raise StoreDown(f"the object store does not answer ({e.message}): the objects cannot be rewound to "
                        f"{iso(target)}",
                        hint="start it (`aixsss-ops stack up`), or restore the database alone with `--db-only` and "
                             f"the objects later with `aixsss-ops restore --to-time {iso(target)} --objects-only`") \
            from None


def objects_or_why(dep: Deployment, target: datetime) -> tuple[objects.ObjectPlan | None, str | None]:
    """``objects_at`` for a plan that is only shown (``--dry-run``): a store that does not answer is a warning."""
    try:
        return objects_at(dep, target)
    except StoreDown as e:
        return None, f"{e.message}: the restore would be refused (exit 3); {e.hint}"


def no_objects(_dep: Deployment, _target: datetime) -> tuple[None, None]:
    return None, None


def assemble(target: datetime, chosen: BaseBackup, arch: Archived,
              objs: tuple[objects.ObjectPlan | None, str | None]) -> PitrPlan:
    obj_plan, obj_warning = objs
    replay = engine_mod.wal_after(arch.files, chosen.wal_start)
    tl = engine_mod.timeline_at(arch.timelines, target)
    warnings = arch.warnings + ([obj_warning] if obj_warning else [])
    p = PitrPlan(target, chosen, tl, arch.window, len(replay), sum(w.size for w in replay), obj_plan,
                 warnings=warnings)
    p.steps = [
        f"restore base backup {chosen.label} ({chosen.type}, consistent at {iso(chosen.stopped)}) into a new data "
        f"folder, replaying at most {len(replay)} archived WAL segment(s) to {iso(target)}"
        + (f" on timeline {tl}" if tl else ""),
        "stop the app and Postgres, move the live data folder aside (kept), the restored one into place, start "
        "Postgres: it replays to the target and promotes",
    ]
    if obj_plan is not None:
        p.steps.append(f"rewind bucket {obj_plan.bucket} to {iso(target)}: {len(obj_plan.copy)} version(s) made "
                       f"current, {len(obj_plan.hide)} delete marker(s), {obj_plan.unchanged} unchanged")
    elif obj_warning:
        p.steps.append("objects: the store does not answer (the restore would be refused)")
    p.steps.append("re-encrypt provider keys the current key cannot read (with API_KEY_ENCRYPTION_KEY_PREVIOUS), "
                   "start the app again")
    return p


def plan(dep: Deployment, target_text: str, eng: Engine | None = None, now: datetime | None = None,
         with_objects: bool = True) -> PitrPlan:
    """What ``restore --to-time`` would do (``--dry-run``). The object listing runs beside the WAL switch check."""
    eng = eng or engine(dep)
    now = now or datetime.now(UTC)
    target, info, chosen = start(dep, target_text, eng, now)
    with ThreadPoolExecutor(1, thread_name_prefix="pitr-objects") as pool:
        objs = pool.submit(objects_or_why if with_objects else no_objects, dep, target)
        arch = archived(dep, eng, info, target)
        return assemble(target, chosen, arch, objs.result())


def resolve_target(target_text: str) -> str:
    """``T`` as given (ISO 8601 with a zone, or relative to now) as the absolute instant it names now, in UTC: what
    a prompt shows and what the restore is then given, so an answer that takes a while does not move T."""
    return iso(engine_mod.parse_target(target_text, datetime.now(UTC)))
