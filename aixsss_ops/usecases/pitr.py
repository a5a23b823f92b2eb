"""Point-in-time recovery of a deployment, its archiving side: the engine (pgBackRest) of the stack's cluster, physical
base backups, their schedule, the recovery window and the lifecycle rule that makes objects expire with it.
``restore --to-time T`` is in ``pitr_plan`` (what it would do) and ``pitr_restore``.

Only the embedded stack's cluster (``backup.pitr``), local runtime (pgBackRest a process of this machine), docker or
swarm (pgBackRest in the Postgres container, its repository a volume): the engine's ``site`` says where it runs and
where the data folders are; everything here is the same for all of them.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aixsss_ops.backup import objects
from aixsss_ops.backup import pitr as engine_mod
from aixsss_ops.backup.pitr import Engine, Info, Window, iso
from aixsss_ops.config import parse_calendar
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
    return Status(info, engine_mod.window(info, newest, eng.gap(info, files, _tl)), len(files),
                  sum(w.size for w in files), newest)


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
    with exclusive(dep, f"backup base --type {kind}"):
        return _base(dep, eng, kind, say)


def exclusive(dep: Deployment, action: str):
    """The deploy lock, not waited for, for the length of ``action`` (a context manager): no deploy, rollback,
    restore or other base backup meanwhile (LockBusy, naming the holder, when one runs)."""
    from aixsss_ops.deploy.lock import DeployLock

    lock = DeployLock(dep.layout.deploy_dir)
    lock.acquire(0, {"action": action})
    return lock


def _base(dep: Deployment, eng: Engine, kind: str, say: Say) -> dict[str, Any]:
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
    """The systemd units and timers of the base backups on the configured calendars, named for the project, and
    their cron lines (None for a calendar cron cannot say). The command's words are quoted for each: systemd's
    ExecStart= (``%`` as ``%%``, ``$`` as ``$$``), the shell cron runs (``%`` as ``\\%``)."""
    _require_on(dep)
    b = dep.cfg.backup
    exe = str(Path(sys.executable).parent / "aixsss-ops")
    cfg_path = str(dep.cfg.config_path or Path("ops.toml").resolve())
    for what, text in (("the config file's path", cfg_path), ("aixsss-ops's path", exe)):
        if any(c in text for c in "\n\r"):
            raise UsageError(f"{what} {text!r} holds a line break: no cron line can carry it",
                             hint="move the file to a path without one")
    calendars = {"full": b.pitr_full_calendar, "incr": b.pitr_incr_calendar}
    units, timers, cron = {}, [], {}
    for kind, cal in calendars.items():
        argv = [exe, "--config", cfg_path, "--yes", "backup", "base", "--type", kind]
        name = f"aixsss-ops-{dep.cfg.project}-backup-{kind}"
        units[f"{name}.service"] = (
            f"[Unit]\nDescription=aixsss-ops {dep.cfg.project}: physical base backup ({kind})\n\n[Service]\n"
            f"Type=oneshot\nExecStart={' '.join(map(systemd_word, argv))}\n")
        units[f"{name}.timer"] = (
            f"[Unit]\nDescription=aixsss-ops {dep.cfg.project}: {kind} base backup\n\n[Timer]\nOnCalendar={cal}\n"
            "Persistent=true\n\n[Install]\nWantedBy=timers.target\n")
        timers.append(f"{name}.timer")
        when = cron_of(cal)
        cron[kind] = f"{when} {' '.join(map(cron_word, argv))}" if when else None
    return {"units": units, "timers": timers, "cron": cron, "calendars": calendars}


_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./-]+")  # words systemd and sh both take as they are


def systemd_word(arg: str) -> str:
    """One word of an ExecStart= line, as systemd.service(5) splits it: double quotes around anything but a plain
    word, C escapes for backslash, quote and control characters, ``%%`` for a specifier's ``%``, ``$$`` for a
    variable's ``$``."""
    if _PLAIN.fullmatch(arg):
        return arg
    out = []
    for c in arg:
        if c in '\\"':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append({"%": "%%", "$": "$$"}.get(c, c))
    return '"' + "".join(out) + '"'


def cron_word(arg: str) -> str:
    """One word of a crontab command: quoted for sh, each ``%`` (cron's line break) escaped as ``\\%``; cron takes
    a backslash right before a ``%`` as that escape, so such a backslash ends its quote first."""
    return shlex.quote(arg).replace("\\%", "\\''%").replace("%", "\\%")


_CRON_SHORTHANDS = {"hourly": "0 * * * *", "daily": "0 0 * * *", "weekly": "0 0 * * 1", "monthly": "0 0 1 * *"}


def cron_of(calendar: str) -> str | None:
    """The cron schedule (5 fields) of an OnCalendar expression whose days are weekdays (or every day) at whole
    minutes in the machine's zone (``daily``, ``Sun *-*-* 03:00:00``, ``Mon..Sat 03:00``, ``Sun..Sun 03:00``,
    ``Mon,Thu 01:30``); None for any other (a date, seconds, a time zone)."""
    if calendar.strip().lower() in _CRON_SHORTHANDS:
        return _CRON_SHORTHANDS[calendar.strip().lower()]
    ev = parse_calendar(calendar)
    if (ev.years, ev.months, ev.days, ev.zone, ev.last_days) != (None, None, None, None, False) \
            or ev.seconds != frozenset({0}):
        return None
    days = None if ev.weekdays is None else {(d + 1) % 7 for d in ev.weekdays}  # cron: 0 = Sunday
    return " ".join([_cron_field(ev.minutes), _cron_field(ev.hours), "*", "*", _cron_field(days)])


def _cron_field(values) -> str:
    """``*``, or the values as a list of numbers and ranges ``a-b``."""
    if values is None:
        return "*"
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
