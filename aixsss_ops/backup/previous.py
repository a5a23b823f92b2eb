"""The databases a restore kept: ``<name>_pre_restore_<time>``, the live database as it was before the swap.

A restore never drops them (they are its undo); ``backup cleanup`` does, by retention: those older than
``backup.pre_restore_keep_days`` go, the one kept by the newest restore stays unless asked for. Each is found by
the comment the swap puts on it (which database it was, which backup replaced it, when), or, for databases kept
before that comment existed, by its name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aixsss_ops.backup import manifest as mf
from aixsss_ops.dburl import PgTarget

TAG = "aixsss-ops pre-restore"
_NAME = re.compile(r"^(?P<of>.+)_pre_restore_(?P<stamp>\d{8}T\d{6}Z)(_[0-9a-f]{2})?$")


def marker(of: str, backup_id: str | None, at: datetime | None = None) -> str:
    """The comment on a kept database."""
    return json.dumps({"kind": TAG, "of": of, "backup": backup_id, "at": mf.iso(at or mf.utcnow())},
                      sort_keys=True)


@dataclass
class Kept:
    name: str
    of: str
    at: datetime
    backup: str | None
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "of": self.of, "at": mf.iso(self.at), "backup": self.backup, "size": self.size}


def _parse(name: str, comment: str | None) -> tuple[str, datetime, str | None] | None:
    if comment:
        try:
            data = json.loads(comment)
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("kind") == TAG and data.get("of") and data.get("at"):
            try:
                return str(data["of"]), mf.parse_iso(str(data["at"])), data.get("backup")
            except ValueError:
                pass
    m = _NAME.match(name)
    if m:
        at = datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return m["of"], at, None
    return None


def kept_databases(admin: PgTarget, of: str) -> list[Kept]:
    """The databases restores of ``of`` kept, oldest first."""
    with admin.connect(timeout=10) as c:
        rows = c.execute(
            "SELECT datname, shobj_description(oid, 'pg_database'), pg_database_size(oid) FROM pg_database "
            "WHERE datname LIKE '%%\\_pre\\_restore\\_%%' OR shobj_description(oid, 'pg_database') LIKE %s",
            (f"%{TAG}%",)).fetchall()
    out = []
    for name, comment, size in rows:
        parsed = _parse(name, comment)
        if parsed is None:
            continue
        owner, at, backup = parsed
        # a comment names the database exactly; a bare name may hold only a prefix of a long name (30+ characters)
        if owner == of or (not comment and len(owner) >= 30 and of.startswith(owner)):
            out.append(Kept(name, owner, at, backup, int(size or 0)))
    return sorted(out, key=lambda k: k.at)


@dataclass
class CleanupPlan:
    of: str
    keep_days: float
    drop: list[Kept] = field(default_factory=list)
    keep: dict[str, str] = field(default_factory=dict)  # name -> why

    def to_dict(self) -> dict[str, Any]:
        return {"database": self.of, "keep_days": self.keep_days, "drop": [k.to_dict() for k in self.drop],
                "keep": self.keep, "bytes_freed": sum(k.size for k in self.drop)}


def plan_cleanup(kept: list[Kept], of: str, keep_days: float, include_newest: bool = False,
                 now: datetime | None = None) -> CleanupPlan:
    """Drop what is older than ``keep_days``; never the newest restore's database unless ``include_newest``."""
    now = now or mf.utcnow()
    plan = CleanupPlan(of, keep_days)
    newest = max(kept, key=lambda k: k.at) if kept else None
    for k in kept:
        if k is newest and not include_newest:
            plan.keep[k.name] = "kept by the newest restore (--include-newest drops it)"
        elif now - k.at < timedelta(days=keep_days):
            plan.keep[k.name] = f"younger than {keep_days:g} day(s)"
        else:
            plan.drop.append(k)
    return plan


def cleanup(admin: PgTarget, of: str, keep_days: float, *, include_newest: bool = False,
            dry_run: bool = False) -> tuple[CleanupPlan, list[str]]:
    from aixsss_ops.backup import postgres as pgb

    plan = plan_cleanup(kept_databases(admin, of), of, keep_days, include_newest)
    dropped: list[str] = []
    if not dry_run:
        for k in plan.drop:
            pgb.drop_database(admin, k.name)
            dropped.append(k.name)
    return plan, dropped
