"""Runs the checks in parallel with a per-check timeout, so one dead dependency cannot hang the report.

Every check gets its own daemon thread (a stuck network call is abandoned, never joined, so it cannot
delay the exit either). A check that needs a dependency waits for that dependency's reachability check
first and is reported as skipped when it failed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from aixsss_ops.doctor.context import Context
from aixsss_ops.doctor.registry import Check
from aixsss_ops.findings import STATUS_ORDER, Finding


@dataclass
class Report:
    findings: list[Finding]
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in ("ok", "warn", "fail", "skipped")}

    @property
    def ok(self) -> bool:
        return not any(f.status == "fail" for f in self.findings)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "summary": self.counts, "duration_s": round(self.seconds, 3),
                "findings": [f.to_dict() for f in self.findings],
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


class _Slot:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.findings: list[Finding] = []
        self.seconds = 0.0
        self.started: float | None = None


def _as_list(result) -> list[Finding]:
    return list(result) if isinstance(result, list | tuple) else [result]


def _error_finding(ch: Check, e: BaseException) -> Finding:
    from aixsss_ops.errors import OpsError

    msg = e.message if isinstance(e, OpsError) else " ".join(f"{type(e).__name__}: {e}".split())
    return Finding(ch.name, "fail", msg[:500], getattr(e, "hint", None) or "rerun with --only " + ch.name + " --verbose")


# Imported before the threads start: two threads importing the same package at once can see it half
# initialised (minio's modules import each other).
_MODULES = {
    "postgres": ("psycopg", "aixsss_ops.dburl", "aixsss_ops.migrate"),
    "config": ("psycopg", "aixsss_ops.dburl"),
    "keys": ("psycopg", "aixsss_ops.crypto"),
    "env": ("aixsss_ops.envcheck.rules", "aixsss_ops.contracts.env", "aixsss_ops.crypto"),
    "redis": ("redis", "aixsss_ops.queue.conn", "aixsss_ops.queue.checks"),
    "swarm": ("docker", "aixsss_ops.runtime.docker_engine", "aixsss_ops.runtime.swarm_nodes"),
    "queue": ("redis", "aixsss_ops.queue.inspect", "aixsss_ops.queue.workers", "aixsss_ops.queue.checks"),
    "s3": ("urllib3", "minio", "minio.commonconfig", "minio.versioningconfig", "minio.lifecycleconfig", "minio.error",
           "aixsss_ops.backup.objects", "aixsss_ops.backup.prune"),
    "backup": ("aixsss_ops.backup.catalog", "aixsss_ops.backup.manifest"),
    "deploy": ("aixsss_ops.deploy.engine", "aixsss_ops.stack.manager", "aixsss_ops.proxy.nginx"),
}


def _preload(checks: list[Check]) -> None:
    import importlib

    for mod in dict.fromkeys(m for ch in checks for m in _MODULES.get(ch.group, ())):
        importlib.import_module(mod)


def run(checks: list[Check], ctx: Context, timeout: float | None = None) -> Report:
    timeout = ctx.timeout if timeout is None else timeout
    t0 = time.monotonic()
    _preload(checks)
    slots = {ch.name: _Slot() for ch in checks}

    def work(ch: Check) -> None:
        slot = slots[ch.name]
        try:
            dep = slots.get(ch.needs) if ch.needs else None
            if dep is not None:
                if not dep.done.wait(timeout):
                    slot.findings = [Finding(ch.name, "skipped", f"{ch.needs} did not finish")]
                    return
                if any(f.status == "fail" for f in dep.findings):
                    slot.findings = [Finding(ch.name, "skipped", f"{ch.needs.split('.')[0]} is unreachable")]
                    return
            start = slot.started = time.monotonic()
            try:
                slot.findings = _as_list(ch.fn(ctx))
            except Exception as e:
                slot.findings = [_error_finding(ch, e)]
            slot.seconds = time.monotonic() - start
        finally:
            slot.done.set()

    for ch in checks:
        threading.Thread(target=work, args=(ch,), name=f"doctor-{ch.name}", daemon=True).start()

    findings: list[Finding] = []
    timings: dict[str, float] = {}
    for ch in checks:
        slot = slots[ch.name]
        dependent = ch.needs in slots
        timed_out = False
        while not slot.done.is_set():
            # a check gets `timeout` from its own start; one that waits for a dependency, `timeout` for that too
            limit = (slot.started or (t0 + (timeout if dependent else 0.0))) + timeout
            now = time.monotonic()
            if now >= limit:
                timed_out = not slot.done.is_set()
                break
            slot.done.wait(min(0.05, limit - now))
        if not timed_out:
            findings += slot.findings
            timings[ch.name] = slot.seconds
        else:
            findings.append(Finding(ch.name, "fail", f"did not finish within {timeout:g}s (a dependency that hangs?)",
                                    "rerun with --only " + ch.name + " and a larger --timeout to see what it waits for"))
            timings[ch.name] = timeout
    return Report(findings, time.monotonic() - t0, timings)


def sort_key(f: Finding) -> int:
    return STATUS_ORDER[f.status]
