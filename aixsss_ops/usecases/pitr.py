"""Point-in-time recovery of a deployment, its archiving side: the engine (pgBackRest) of the stack's cluster, physical
base backups, their schedule, the recovery window and the lifecycle rule that makes objects expire with it.
``restore --to-time T`` is in ``pitr_plan`` (what it would do) and ``pitr_restore``.

Only the embedded stack's cluster (``backup.pitr``), local runtime (pgBackRest a process of this machine), docker or
swarm (pgBackRest in the Postgres container, its repository a volume): the engine's ``site`` says where it runs and
where the data folders are; everything here is the same for all of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.backup import objects
from aixsss_ops.backup import pitr as engine_mod
from aixsss_ops.backup.pitr import Engine, Info, Window, iso
from aixsss_ops.context.deployment import EMBEDDED_ADMIN, Deployment
from aixsss_ops.errors import OpsError, UsageError

Say = Callable[[str], None]


def _require_on(dep: Deployment) -> None:
    if not dep.cfg.backup.pitr:
        raise UsageError("point-in-time recovery is off", hint="set backup.pitr = true in ops.toml, then "
                         "`aixsss-ops stack up` (restarts Postgres with WAL archiving) and `aixsss-ops backup base`")


def _require(dep: Deployment) -> None:
    _require_on(dep)
    if dep.admin_database.source != EMBEDDED_ADMIN:
        raise UsageError(f"point-in-time recovery restores the embedded stack's cluster, but the database comes from "
                         f"{dep.admin_database.source}", hint="drop --database-url / DATABASE_URL for this command")


def engine(dep: Deployment) -> Engine:
    """pgBackRest against the stack's cluster, where the stack's runtime runs it (local: writes its config, the same
    file ``stack up`` writes; docker, swarm: in the Postgres container, whose exec on swarm runs on the engine's own
    node only, and refuses naming the node Postgres is pinned to when that is another one)."""
    from aixsss_ops.stack.engines import open_stack

    _require(dep)
    return engine_mod.engine_for(dep.cfg, dep.layout, runtime=open_stack(dep).runtime)


@dataclass
class Status:
    info: Info
    window: Window
    wal_segments: int
    wal_bytes: int
    newest_wal: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"stanza": self.info.stanza, "status": self.info.status, "window": self.window.to_dict(),
                "base_backups": [b.to_dict() for b in self.info.backups], "wal_segments": self.wal_segments,
                "wal_bytes": self.wal_bytes, "newest_wal_at": iso(self.newest_wal)}


def status(dep: Deployment, eng: Engine | None = None) -> Status:
    """Base backups, archived WAL and the window (``backup list``, doctor)."""
    eng = eng or engine(dep)
    info = eng.info()
    files, _tl = eng.wal_files(info.archive_id) if info.exists else ([], {})
    newest = engine_mod.newest_wal(files)
    return Status(info, engine_mod.window(info, newest), len(files), sum(w.size for w in files), newest)


def ensure_stanza(eng: Engine) -> bool:
    """The stanza exists (created on first use: archiving of the running cluster starts to succeed then)."""
    if eng.info().exists:
        return False
    eng.stanza_create()
    return True


def lifecycle(dep: Deployment) -> tuple[list[str], bool]:
    """Noncurrent object versions expire with the window: when the bucket has no such rule, one of
    pitr_retention_days + 1 days (lifecycle days round up to midnight UTC), or longer when the logical backups'
    retention (keep_*) or noncurrent_version_days asks for more (their restore points need the versions too)."""
    from aixsss_ops.backup.prune import Policy

    b = dep.cfg.backup
    days = b.pitr_retention_days + 1
    logical = Policy(b.keep_last, b.keep_daily, b.keep_weekly).horizon_days
    objects.ensure_versioning(dep.s3, dep.bucket)
    return objects.lifecycle_warnings(dep.s3, dep.bucket, days,
                                      add_days=max(days, logical, b.noncurrent_version_days))


def base(dep: Deployment, kind: str = "full", say: Say = lambda _m: None) -> dict[str, Any]:
    """A physical base backup (pgBackRest ``backup --type full|incr``); old ones expire by time afterwards."""
    if kind not in ("full", "incr", "diff"):
        raise UsageError(f"--type {kind!r}: one of full, incr, diff")
    eng = engine(dep)
    if ensure_stanza(eng):
        say(f"created the pgBackRest stanza {eng.stanza}")
    try:
        warnings, added = lifecycle(dep)
    except OpsError as e:  # the database's base backup does not wait for the object store
        warnings, added = [f"object store: versioning and the lifecycle rule not checked: {e.message}"], False
    if added:
        say(f"added a lifecycle rule expiring noncurrent versions of {dep.bucket}")
    say(f"pgbackrest backup --type={kind}")
    started = datetime.now(UTC)
    eng.backup(kind)
    st = status(dep, eng)
    newest = st.info.backups[-1] if st.info.backups else None
    return {"backup": newest.to_dict() if newest else None, "duration_s": (datetime.now(UTC) - started).total_seconds(),
            "window": st.window.to_dict(), "warnings": warnings}


def schedule(dep: Deployment) -> dict[str, Any]:
    """The systemd units and timers of the base backups on the configured calendars, and their cron lines (None for
    a calendar cron cannot say)."""
    _require_on(dep)
    b = dep.cfg.backup
    exe = str(Path(sys.executable).parent / "aixsss-ops")
    cfg_path = dep.cfg.config_path or Path("ops.toml").resolve()
    units = engine_mod.schedule_lines(exe, cfg_path, b.pitr_full_calendar, b.pitr_incr_calendar)
    cron = {}
    for kind, cal in (("full", b.pitr_full_calendar), ("incr", b.pitr_incr_calendar)):
        when = engine_mod.cron_of(cal)
        cron[kind] = f"{when} {exe} --config {cfg_path} --yes backup base --type {kind}" if when else None
    return {"units": units, "cron": cron, "calendars": {"full": b.pitr_full_calendar, "incr": b.pitr_incr_calendar}}
