"""``backup prune``: the retention policy (keep last N, daily D, weekly W).

Only complete backups count toward the policy. Never deleted: what the policy keeps, backups marked keep,
and the newest backup whose last verification passed. Remains of interrupted runs are removed too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup.catalog import Catalog, Entry


@dataclass
class Policy:
    keep_last: int = 7
    keep_daily: int = 7
    keep_weekly: int = 4

    @property
    def horizon_days(self) -> int:
        """How far back the policy can reach: what a noncurrent-version lifecycle rule must outlive."""
        return max(self.keep_daily, self.keep_weekly * 7, 1) + 1


@dataclass
class PrunePlan:
    keep: dict[str, list[str]] = field(default_factory=dict)  # id -> reasons
    delete: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "delete": self.delete, "incomplete_remains": self.incomplete}


def plan_prune(entries: list[Entry], policy: Policy) -> PrunePlan:
    complete = [e for e in entries if e.status == "complete"]
    newest_first = sorted(complete, key=lambda e: mf.parse_iso(e.created_at), reverse=True)
    reasons: dict[str, list[str]] = {e.id: [] for e in newest_first}
    for e in newest_first[: policy.keep_last]:
        reasons[e.id].append("last")

    def buckets(keyfn, count: int, why: str) -> None:
        seen: list = []
        for e in newest_first:
            k = keyfn(mf.parse_iso(e.created_at))
            if k in seen:
                continue
            if len(seen) >= count:
                break
            seen.append(k)
            reasons[e.id].append(why)

    buckets(lambda t: t.date(), policy.keep_daily, "daily")
    buckets(lambda t: tuple(t.isocalendar())[:2], policy.keep_weekly, "weekly")
    for e in newest_first:
        if e.keep:
            reasons[e.id].append("marked keep")
    verified = next((e for e in newest_first if e.verified_ok), None)
    if verified is not None:
        reasons[verified.id].append("newest verified")
    plan = PrunePlan()
    for e in newest_first:
        if reasons[e.id]:
            plan.keep[e.id] = reasons[e.id]
        else:
            plan.delete.append(e.id)
    plan.incomplete = [e.id for e in entries if e.status == "incomplete"]
    return plan


def prune(catalog: Catalog, policy: Policy, dry_run: bool = False) -> tuple[PrunePlan, list[str]]:
    entries = catalog.entries()
    plan = plan_prune(entries, policy)
    if dry_run:
        return plan, []
    by_id = {e.id: e for e in entries}
    for bid in plan.delete:
        catalog.delete(by_id[bid])
    return plan, catalog.cleanup()
