"""Queue controls with BullMQ's semantics: pause/resume, drain-wait, retry failed jobs, clean.

Scripts come from the ``bullmq`` Python package (its ``commands/*.lua``, loaded as the package
loads them) and run on our own redis-py client so every call has a timeout. The one exception
is pausing a 5.x-layout queue: the Python package only knows the 6.x pause (flag in ``meta``,
jobs stay in ``wait``), which a Node BullMQ 5 producer would undo badly (its resume RENAMEs
``paused`` over ``wait``). For that layout we run BullMQ 5's own pause script, copied below.

Every mutating function has a ``dry_run`` or is idempotent, and returns a plain result.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import cache

from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.output import scrubber
from aixsss_ops.poll import poll_until
from aixsss_ops.queue.conn import DEFAULT_TIMEOUT, connect
from aixsss_ops.queue.inspect import LAYOUT_6, detect_layout
from aixsss_ops.queue.keys import DEFAULT_PREFIX, QueueKeys

# BullMQ 5.81.5 dist/cjs/scripts/pause-7.js (MIT, Taskforce.sh), pause branch only, with one guard added:
# it refuses (returns -1) instead of RENAMEing 'wait' over an existing 'paused' list, and returns how many
# entries it moved (0 when 'wait' was empty: then nothing was renamed).
BULLMQ5_PAUSE = """
local rcall = redis.call
local markerKey = KEYS[7]
local hasJobs = rcall("EXISTS", KEYS[1]) == 1
if hasJobs and rcall("EXISTS", KEYS[2]) == 1 then return -1 end
local moved = 0
if hasJobs then moved = rcall("LLEN", KEYS[1]); rcall("RENAME", KEYS[1], KEYS[2]) end
rcall("HSET", KEYS[3], "paused", 1)
rcall("DEL", markerKey)
rcall("XADD", KEYS[5], "*", "event", ARGV[1]);
return moved
"""

RETRY_BATCH = 1000
CLEAN_BATCH = 1000
PLAN_SAMPLE = 50
REASON_MAX = 200
LIMIT_MAX = 1_000_000_000  # a --limit above it is refused (Redis takes no number past 2**63-1, its scripts 2**53)
TIMEOUT_MAX = 7 * 86400.0  # seconds: the longest --timeout
DURATION_MAX = 100 * 365 * 86400.0  # seconds: the longest --older-than


def check_limit(limit: int | None) -> None:
    """A ``--limit`` is a count of 1 to LIMIT_MAX (None: no limit); anything else is a UsageError."""
    if limit is not None and not 1 <= limit <= LIMIT_MAX:
        raise UsageError(f"--limit must be between 1 and {LIMIT_MAX}")


@cache
def bullmq_script(name: str) -> str:
    """The text of one of the ``bullmq`` package's Lua commands (e.g. ``moveJobsToWait``)."""
    from bullmq.redis_connection import SCRIPT_DEFINITIONS, loadScript

    return loadScript(SCRIPT_DEFINITIONS[name])


def _run(r, name: str, keys: list[str], args: list) -> object:
    return r.register_script(bullmq_script(name))(keys=keys, args=args)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class QueueState:
    paused: bool
    layout: str
    layout_evidence: str
    active: int
    wait_len: int = 0

    @property
    def target_list(self) -> str:
        """Where a job made runnable goes: BullMQ 5 pushes to 'paused' while paused, 6.x always to 'wait'."""
        return "paused" if self.paused and self.layout != LAYOUT_6 else "wait"


def read_state(r, k: QueueKeys) -> QueueState:
    p = r.pipeline(transaction=True)
    p.hmget(k.meta, "paused", "version")
    p.llen(k.wait)
    p.llen(k.paused)
    p.llen(k.active)
    (paused, version), wait_len, paused_len, active = p.execute()
    layout, evidence = detect_layout(version, paused is not None, wait_len, paused_len)
    return QueueState(paused is not None, layout, evidence, active, wait_len)


# -- pause / resume ---------------------------------------------------------------------------------

@dataclass
class ControlResult:
    queue: str
    action: str
    changed: bool
    paused: bool
    layout: str
    active: int
    message: str
    layout_evidence: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def pause_queue(r, queue: str, prefix: str = DEFAULT_PREFIX) -> ControlResult:
    k = QueueKeys(queue, prefix)
    st = read_state(r, k)
    if st.paused:
        return ControlResult(queue, "pause", False, True, st.layout, st.active, f"queue '{queue}' was already paused",
                             st.layout_evidence)
    keys = [k.wait, k.paused, k.meta, k.prioritized, k.events, k.delayed, k.marker]
    if st.layout == LAYOUT_6:
        _run(r, "pause", keys, ["paused"])
        how = f"meta.paused set; {st.wait_len} job(s) stay in 'wait'"
    else:  # 5.x, or not known yet: BullMQ 5's pause, which a 6.x worker also honours (the flag)
        moved = r.register_script(BULLMQ5_PAUSE)(keys=keys, args=["paused"])
        if moved == -1:
            raise OpsError(f"queue '{queue}' has both a 'wait' and a 'paused' list while not paused",
                           hint="run `aixsss-ops queue resume` once to merge them, then pause")
        how = (f"meta.paused set; 'wait' ({moved} job(s)) renamed to 'paused' (BullMQ 5 pause)" if moved
               else "meta.paused set; 'wait' was empty, nothing was moved")
    # the layout as `queue stats` reads it now, after the pause: the report and stats never disagree
    after = read_state(r, k)
    return ControlResult(queue, "pause", True, True, after.layout, st.active,
                         f"paused '{queue}': {how}; layout {after.layout} ({after.layout_evidence}); "
                         f"{st.active} active job(s) will finish", after.layout_evidence)


def resume_queue(r, queue: str, prefix: str = DEFAULT_PREFIX) -> ControlResult:
    """The bullmq package's resume: clears meta.paused and merges a 5.x 'paused' list back into 'wait'."""
    k = QueueKeys(queue, prefix)
    st = read_state(r, k)
    legacy = r.exists(k.paused) == 1
    if not st.paused and not legacy:
        return ControlResult(queue, "resume", False, False, st.layout, st.active, f"queue '{queue}' was not paused",
                             st.layout_evidence)
    keys = [k.paused, k.wait, k.meta, k.prioritized, k.events, k.delayed, k.marker]
    for _ in range(100_000):
        remaining = _run(r, "pause", keys, ["resumed"])
        if not remaining:
            break
    return ControlResult(queue, "resume", True, False, st.layout, st.active, f"resumed '{queue}'", st.layout_evidence)


def pause(redis_url: str, queue: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT) -> ControlResult:
    """Workers stop taking new jobs; active jobs finish. Idempotent."""
    with connect(redis_url, timeout) as r:
        return pause_queue(r, queue, prefix)


def resume(redis_url: str, queue: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT) -> ControlResult:
    """Undo :func:`pause` (either layout). Idempotent."""
    with connect(redis_url, timeout) as r:
        return resume_queue(r, queue, prefix)


# -- drain-wait -------------------------------------------------------------------------------------

@dataclass
class DrainResult:
    queue: str
    drained: bool
    active: int
    paused: bool
    waited_s: float
    timeout_s: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def drain_wait(redis_url: str, queue: str, timeout: float, *, prefix: str = DEFAULT_PREFIX, poll: float = 0.25,
               conn_timeout: float = DEFAULT_TIMEOUT) -> DrainResult:
    """Wait until no job of ``queue`` is active, at most ``timeout`` seconds. Pause first, or new jobs start."""
    if not 0 <= timeout <= TIMEOUT_MAX:  # also NaN
        raise UsageError(f"--timeout must be between 0 and {TIMEOUT_MAX:.0f} seconds")
    k = QueueKeys(queue, prefix)
    start = time.monotonic()
    seen = {}
    with connect(redis_url, conn_timeout) as r:
        def idle() -> bool:
            p = r.pipeline(transaction=True)
            p.llen(k.active)
            p.hexists(k.meta, "paused")
            seen["active"], seen["paused"] = p.execute()
            return seen["active"] == 0

        drained = bool(poll_until(idle, timeout, interval=poll))
    waited, active, paused = round(time.monotonic() - start, 3), seen["active"], bool(seen["paused"])
    if drained:
        note = "" if paused else " (the queue is not paused: new jobs may start)"
        return DrainResult(queue, True, 0, paused, waited, timeout, f"no active jobs{note}")
    return DrainResult(queue, False, active, paused, waited, timeout, f"{active} job(s) still active after {timeout:g}s")


# -- failed jobs ------------------------------------------------------------------------------------

@dataclass
class FailedJob:
    id: str
    name: str | None
    attempts_made: int
    attempts: int | None
    failed_reason: str | None
    created_at: str | None
    processed_at: str | None
    finished_at: str | None

    def to_dict(self) -> dict:
        return asdict(self)


def _iso(ms) -> str | None:
    if ms in (None, ""):
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(float(ms)) / 1000, UTC).isoformat(timespec="seconds")


def _truncate(s: str | None, n: int) -> str | None:
    if s is None or len(s) <= n:
        return s
    return s[: n - 1] + "…"


def read_failed(r, queue: str, limit: int = 20, prefix: str = DEFAULT_PREFIX,
                reason_max: int = REASON_MAX) -> list[FailedJob]:
    """The most recently failed jobs first (the failed set is scored by finishedOn). A failedReason is scrubbed
    (``output.scrubber``: the secrets registered so far, API-key-shaped strings) before it is truncated, so no
    cut-off piece of a secret is left."""
    check_limit(limit)
    k = QueueKeys(queue, prefix)
    ids = r.zrevrange(k.failed, 0, limit - 1)
    p = r.pipeline(transaction=False)
    for j in ids:
        p.hmget(k.job(j), "name", "atm", "attemptsMade", "opts", "failedReason", "timestamp", "processedOn", "finishedOn")
    out = []
    for j, (name, atm, atm_old, opts, reason, ts, processed, finished) in zip(ids, p.execute(), strict=True):
        attempts = None
        try:
            attempts = int(json.loads(opts).get("attempts")) if opts else None
        except (ValueError, TypeError, AttributeError):
            attempts = None
        out.append(FailedJob(
            id=j, name=name, attempts_made=int(atm or atm_old or 0), attempts=attempts,
            failed_reason=_truncate(scrubber.scrub(reason) if reason else reason, reason_max),
            created_at=_iso(ts), processed_at=_iso(processed),
            finished_at=_iso(finished),
        ))
    return out


def failed_jobs(redis_url: str, queue: str, limit: int = 20, *, prefix: str = DEFAULT_PREFIX,
                timeout: float = DEFAULT_TIMEOUT) -> list[FailedJob]:
    with connect(redis_url, timeout) as r:
        return read_failed(r, queue, limit, prefix)


# -- retry failed -----------------------------------------------------------------------------------

@dataclass
class RetryResult:
    queue: str
    dry_run: bool
    names: list[str] | None
    limit: int | None
    planned: int
    retried: int
    target: str
    job_ids: list[str] = field(default_factory=list)  # a sample of the planned ids (at most 50)
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _failed_ids_named(r, k: QueueKeys, names: list[str], limit: int | None, now: int) -> list[str]:
    ids = r.zrangebyscore(k.failed, 0, now)
    p = r.pipeline(transaction=False)
    for j in ids:
        p.hget(k.job(j), "name")
    wanted = set(names)
    picked = [j for j, n in zip(ids, p.execute(), strict=True) if n in wanted]
    return picked[:limit] if limit else picked


def retry_failed(redis_url: str, queue: str, *, names: list[str] | None = None, limit: int | None = None,
                 dry_run: bool = False, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT) -> RetryResult:
    """Move failed jobs back to waiting like BullMQ's ``Queue.retryJobs({state: 'failed'})``.

    Without ``names`` this runs BullMQ's ``moveJobsToWait`` script (oldest failures first, ``limit``
    at most). With ``names`` it selects those jobs and retries each like ``Job.retry('failed')``
    (BullMQ's ``reprocessJob``). While a 5.x-layout queue is paused the jobs go to its 'paused' list,
    as BullMQ 5 does.
    """
    check_limit(limit)
    names = [n for n in (names or []) if n] or None
    k = QueueKeys(queue, prefix)
    now = _now_ms()
    with connect(redis_url, timeout) as r:
        st = read_state(r, k)
        target = st.target_list
        if names:
            ids = _failed_ids_named(r, k, names, limit, now)
            planned = len(ids)
        else:
            total = r.zcount(k.failed, 0, now)
            planned = min(total, limit) if limit else total
            ids = r.zrangebyscore(k.failed, 0, now, start=0, num=min(planned, PLAN_SAMPLE)) if planned else []
        res = RetryResult(queue, dry_run, names, limit, planned, 0, target, ids[:PLAN_SAMPLE])
        if dry_run or planned == 0:
            res.message = f"would retry {planned} failed job(s) into '{target}'" if dry_run else "no failed jobs to retry"
            return res
        if names:
            keys_tail = [k.events, k.failed, k.key(target), k.meta, k.active, k.marker, k.prioritized, k.pc]
            p = r.pipeline(transaction=False)
            for j in ids:
                p.hget(k.job(j), "opts")
            lifos = []
            for opts in p.execute():
                try:
                    lifos.append(bool(json.loads(opts).get("lifo")) if opts else False)
                except (ValueError, AttributeError):
                    lifos.append(False)
            for j, lifo in zip(ids, lifos, strict=True):
                rc = _run(r, "reprocessJob", [k.job(j), *keys_tail],
                          [j, ("R" if lifo else "L") + "PUSH", "failedReason", "failed", "0", "0"])
                if rc == 1:
                    res.retried += 1
        else:
            keys = [k.base, k.events, k.failed, k.key(target), k.paused, k.meta, k.active, k.marker]
            before = r.zcard(k.failed)
            if limit:
                _run(r, "moveJobsToWait", keys, [limit, now, "failed"])
            else:
                while _run(r, "moveJobsToWait", keys, [RETRY_BATCH, now, "failed"]):
                    pass
            res.retried = max(0, before - r.zcard(k.failed))
        res.message = f"retried {res.retried} failed job(s) into '{target}'"
        return res


# -- clean ------------------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or combinations like ``1h30m``."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        total = float(t)
    else:
        pos, total = 0, 0.0
        for m in _DURATION.finditer(t):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_S[m.group(2)]
            pos = m.end()
        if not t or pos != len(t):
            raise UsageError(f"invalid duration {text!r}; use e.g. 30s, 15m, 12h, 7d or 1h30m")
    if not total <= DURATION_MAX:  # also an infinite one (a number too long for a float)
        raise UsageError(f"a duration of at most {DURATION_MAX / 86400 / 365:.0f} years is accepted")
    return total


@dataclass
class CleanResult:
    queue: str
    state: str
    older_than_s: float
    dry_run: bool
    planned: int
    removed: int
    job_ids: list[str] = field(default_factory=list)  # a sample (at most 50)
    message: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def clean(redis_url: str, queue: str, state: str, older_than_s: float, *, limit: int | None = None,
          dry_run: bool = False, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT) -> CleanResult:
    """Remove completed or failed jobs finished more than ``older_than_s`` ago, like ``Queue.clean(grace, limit, type)``."""
    if state not in ("completed", "failed"):
        raise UsageError("--state must be 'completed' or 'failed'")
    if not 0 <= older_than_s <= DURATION_MAX:  # also NaN
        raise UsageError(f"--older-than must be between 0 and {DURATION_MAX:.0f} seconds")
    check_limit(limit)
    k = QueueKeys(queue, prefix)
    cutoff = _now_ms() - int(older_than_s * 1000)
    set_key = k.key(state)
    with connect(redis_url, timeout) as r:
        total = r.zcount(set_key, 0, cutoff)
        planned = min(total, limit) if limit else total
        sample = r.zrangebyscore(set_key, 0, cutoff, start=0, num=min(planned, PLAN_SAMPLE)) if planned else []
        res = CleanResult(queue, state, older_than_s, dry_run, planned, 0, sample)
        if dry_run or planned == 0:
            res.message = (f"would remove {planned} {state} job(s) finished before the cutoff" if dry_run
                           else f"no {state} jobs older than {older_than_s:g}s")
            return res
        removed: list[str] = []
        while len(removed) < planned:
            batch = min(CLEAN_BATCH, planned - len(removed))
            # BullMQ's cleanJobsInSet takes the grace as an absolute timestamp (now - grace)
            got = _run(r, "cleanJobsInSet", [set_key, k.events, k.repeat], [k.base, cutoff, batch, state])
            removed.extend(got or [])
            if not got or len(got) < batch:
                break
        res.removed = len(removed)
        res.job_ids = removed[:PLAN_SAMPLE]
        res.message = f"removed {res.removed} {state} job(s)"
        return res
