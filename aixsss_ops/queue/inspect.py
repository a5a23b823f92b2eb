"""Read-only queue statistics, equal to what BullMQ 5's ``Queue.getJobCounts()`` returns.

Two layouts exist in the wild:

- BullMQ 5.x (the real AIXSSS, Node): ``pause`` sets ``meta.paused`` and RENAMEs ``wait`` to
  ``paused``; jobs added while paused go to the ``paused`` list.
- BullMQ 6.x (and the Python ``bullmq`` package): ``pause`` only sets ``meta.paused``; jobs stay
  in ``wait``.

Either way we report BullMQ 5's numbers: jobs held back by a pause count as ``paused``.

Everything here costs the same for ten jobs or ten million: LLEN/ZCARD/ZCOUNT and a few HMGETs
in two pipelined round trips. BullMQ's own count script is *not* used: it RPOPs legacy markers
as it counts, and an inspector must not write.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from aixsss_ops.queue.conn import DEFAULT_TIMEOUT, connect
from aixsss_ops.queue.keys import DEFAULT_PREFIX, DELAY_SCORE_FACTOR, JOB_COUNT_TYPES, QueueKeys

LAYOUT_5 = "5.x"
LAYOUT_6 = "6.x"
LAYOUT_UNKNOWN = "unknown"
RECENT_WINDOW_S = 15 * 60  # "failed jobs rising" compares the last 15 minutes with the 15 before


def is_legacy_marker(item: str | None) -> bool:
    """BullMQ 4 pushed ``0:<delay>`` markers into wait/paused lists; BullMQ 5 ignores them when counting."""
    return bool(item) and item.startswith("0:")


def list_count(length: int, tail: str | None) -> int:
    """The count BullMQ 5's getCounts script gives for a wait/paused list (a tail marker is not a job)."""
    if is_legacy_marker(tail):
        return length - 1 if length > 1 else 0
    return length


def detect_layout(meta_version: str | None, paused_flag: bool, wait_len: int, paused_len: int) -> tuple[str, str]:
    """Which pause layout a queue follows, and the evidence for it."""
    if meta_version and meta_version.startswith("bullmq:"):
        try:
            major = int(meta_version.split(":", 1)[1].split(".", 1)[0])
        except ValueError:
            major = None
        if major is not None:
            return (LAYOUT_5 if major <= 5 else LAYOUT_6), f"meta.version={meta_version}"
    if paused_len > 0:
        return LAYOUT_5, "a 'paused' list exists"
    if paused_flag and wait_len > 0:
        return LAYOUT_6, "paused with jobs kept in 'wait'"
    return LAYOUT_UNKNOWN, "no version in meta and nothing that tells the layouts apart"


def job_counts(*, paused_flag: bool, wait_len: int, wait_tail: str | None, paused_len: int, paused_tail: str | None,
               active: int, prioritized: int, delayed: int, waiting_children: int, completed: int, failed: int
               ) -> dict[str, int]:
    """BullMQ 5 ``getJobCounts()`` numbers; while paused, jobs left in ``wait`` (6.x layout) count as paused."""
    wait = list_count(wait_len, wait_tail)
    paused = list_count(paused_len, paused_tail)
    if paused_flag:
        paused, wait = paused + wait, 0
    counts = {
        "active": active, "completed": completed, "delayed": delayed, "failed": failed, "paused": paused,
        "prioritized": prioritized, "waiting": wait, "waiting-children": waiting_children,
    }
    assert tuple(counts) == JOB_COUNT_TYPES
    return counts


@dataclass
class QueueStats:
    queue: str
    prefix: str
    exists: bool
    paused: bool
    layout: str
    layout_evidence: str
    counts: dict[str, int]
    oldest_waiting_job: str | None = None
    oldest_waiting_age_s: float | None = None
    delayed_past_due: int = 0
    failure_window_s: float | None = None
    failed_in_window: int = 0
    completed_in_window: int = 0
    failure_rate: float | None = None
    failed_last_15m: int = 0
    failed_prev_15m: int = 0
    meta_version: str | None = None
    global_concurrency: int | None = None
    checked_at: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def waiting_total(self) -> int:
        """Jobs that a worker would take now or after a resume (wait, paused, prioritized)."""
        c = self.counts
        return c["waiting"] + c["paused"] + c["prioritized"]

    def to_dict(self) -> dict:
        return asdict(self)


def _num(v) -> int:
    return int(v or 0)


def stats(redis_url: str, queue: str, *, prefix: str = DEFAULT_PREFIX, timeout: float = DEFAULT_TIMEOUT,
          now_ms: int | None = None) -> QueueStats:
    """One read-only snapshot of a queue (two round trips, independent of queue size)."""
    with connect(redis_url, timeout) as r:
        return read_stats(r, queue, prefix=prefix, now_ms=now_ms)


def read_stats(r, queue: str, *, prefix: str = DEFAULT_PREFIX, now_ms: int | None = None) -> QueueStats:
    k = QueueKeys(queue, prefix)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    recent, before = now - RECENT_WINDOW_S * 1000, now - 2 * RECENT_WINDOW_S * 1000

    p = r.pipeline(transaction=True)  # MULTI/EXEC: one consistent snapshot
    p.hmget(k.meta, "paused", "version", "concurrency")
    p.llen(k.wait)
    p.lrange(k.wait, -2, -1)
    p.llen(k.paused)
    p.lrange(k.paused, -2, -1)
    p.llen(k.active)
    p.zcard(k.prioritized)
    p.zcard(k.delayed)
    p.zcard(k.waiting_children)
    p.zcard(k.completed)
    p.zcard(k.failed)
    p.zcount(k.delayed, "-inf", f"({now * DELAY_SCORE_FACTOR}")
    p.zrange(k.prioritized, 0, 0)
    p.zrange(k.completed, 0, 0, withscores=True)
    p.zrange(k.failed, 0, 0, withscores=True)
    p.exists(*k.all_state_keys(), k.events, k.marker)
    p.zcount(k.failed, recent, "+inf")
    p.zcount(k.failed, before, f"({recent}")
    (meta, wait_len, wait_tail2, paused_len, paused_tail2, active, prioritized, delayed, waiting_children,
     completed, failed, past_due, prio_head, completed_first, failed_first, n_keys, failed_recent, failed_before
     ) = p.execute()

    paused_flag = meta[0] is not None
    meta_version = meta[1]
    wait_tail = wait_tail2[-1] if wait_tail2 else None
    paused_tail = paused_tail2[-1] if paused_tail2 else None
    counts = job_counts(
        paused_flag=paused_flag, wait_len=wait_len, wait_tail=wait_tail, paused_len=paused_len,
        paused_tail=paused_tail, active=active, prioritized=prioritized, delayed=delayed,
        waiting_children=waiting_children, completed=completed, failed=failed,
    )
    layout, evidence = detect_layout(meta_version, paused_flag, wait_len, paused_len)
    st = QueueStats(
        queue=queue, prefix=prefix, exists=n_keys > 0, paused=paused_flag, layout=layout, layout_evidence=evidence,
        counts=counts, delayed_past_due=past_due, failed_last_15m=failed_recent, failed_prev_15m=failed_before,
        meta_version=meta_version, checked_at=datetime.fromtimestamp(now / 1000, UTC).isoformat(timespec="seconds"),
    )
    try:
        st.global_concurrency = int(meta[2]) if meta[2] is not None else None
    except ValueError:
        st.global_concurrency = None
    if not st.exists:
        st.notes.append(f"queue '{queue}' does not exist yet (no keys under {k.base}); all counts are zero")

    # round 2: the oldest waiting candidates and the retained failure window
    def oldest_in(tail2: list[str]) -> str | None:
        for item in reversed(tail2):
            if not is_legacy_marker(item):
                return item
        return None

    candidates = [j for j in (oldest_in(wait_tail2), oldest_in(paused_tail2), prio_head[0] if prio_head else None) if j]
    starts = [s for s in (completed_first[0][1] if completed_first else None,
                          failed_first[0][1] if failed_first else None) if s is not None]
    window_start = max(starts) if starts else None
    if not candidates and window_start is None:
        return st
    p = r.pipeline(transaction=False)
    for j in candidates:
        p.hmget(k.job(j), "timestamp", "delay")
    if window_start is not None:
        p.zcount(k.failed, window_start, "+inf")
        p.zcount(k.completed, window_start, "+inf")
    res = p.execute()
    oldest: tuple[int, str] | None = None
    for j, (ts, delay) in zip(candidates, res[: len(candidates)], strict=True):
        if ts is None:
            continue  # taken by a worker or removed between the two round trips
        ready = int(float(ts)) + int(float(delay or 0))
        if oldest is None or ready < oldest[0]:
            oldest = (ready, j)
    if oldest is not None:
        st.oldest_waiting_job = oldest[1]
        st.oldest_waiting_age_s = round(max(0, now - oldest[0]) / 1000, 3)
    if window_start is not None:
        f, c = res[len(candidates):]
        st.failure_window_s = round(max(0, now - window_start) / 1000, 3)
        st.failed_in_window, st.completed_in_window = f, c
        st.failure_rate = round(f / (f + c), 4) if f + c else None
    return st
