"""Queue checks exported for ``aixsss-ops doctor``: each a small function returning a :class:`Finding`.

The pure ``check_*`` functions take already-read facts (easy to test); :func:`queue_findings`
reads them from Redis and the services' env files and runs them all.
"""

from __future__ import annotations

from collections.abc import Mapping

from aixsss_ops.findings import Finding, Status
from aixsss_ops.queue.conn import DEFAULT_QUEUE, DEFAULT_TIMEOUT, connect
from aixsss_ops.queue.inspect import RECENT_WINDOW_S, QueueStats
from aixsss_ops.queue.keys import DEFAULT_PREFIX

OLDEST_WAITING_THRESHOLD_S = 300.0
FAILED_RISING_MIN = 5

__all__ = ["Finding", "Status", "queue_findings"]


def check_maxmemory_policy(policy: str | None) -> Finding:
    name = "redis.maxmemory-policy"
    if policy is None:
        return Finding(name, "warn", "cannot read maxmemory-policy (CONFIG GET is disabled?)",
                       "make sure the provider sets maxmemory-policy to noeviction")
    if policy != "noeviction":
        return Finding(name, "fail", f"maxmemory-policy is {policy}: Redis may evict BullMQ keys and lose jobs",
                       "set maxmemory-policy noeviction (redis.conf or CONFIG SET maxmemory-policy noeviction)")
    return Finding(name, "ok", "maxmemory-policy is noeviction")


def check_persistence(appendonly: str | None, save: str | None) -> Finding:
    name = "redis.persistence"
    if appendonly is None and save is None:
        return Finding(name, "warn", "cannot read the persistence settings (CONFIG GET is disabled?)")
    aof = (appendonly or "").lower() == "yes"
    rdb = bool((save or "").strip())
    if not aof and not rdb:
        return Finding(name, "warn", "persistence is off (appendonly no, no save points): a Redis restart loses every job",
                       "enable AOF: CONFIG SET appendonly yes (and persist it in redis.conf)")
    return Finding(name, "ok", "persistence on: " + ", ".join(x for x in ("AOF" if aof else "", "RDB" if rdb else "") if x))


def check_queue_name_match(envs: Mapping[str, Mapping[str, str]]) -> Finding:
    """The api enqueues on ``AI_QUEUE_NAME`` and the worker consumes it: they must agree."""
    name = "queue.name-match"
    if "api" not in envs or "worker" not in envs:
        missing = ", ".join(s for s in ("api", "worker") if s not in envs)
        return Finding(name, "warn", f"cannot compare queue names: no env file for {missing}",
                       "write them with `aixsss-ops env init` (or `aixsss-ops stack up`)")
    api = envs["api"].get("AI_QUEUE_NAME") or DEFAULT_QUEUE
    worker = envs["worker"].get("AI_QUEUE_NAME") or DEFAULT_QUEUE
    if api != worker:
        return Finding(name, "fail", f"the api enqueues on '{api}' but the worker consumes '{worker}': jobs never run",
                       "set the same AI_QUEUE_NAME in api.env and worker.env, then restart both")
    return Finding(name, "ok", f"api and worker both use queue '{api}'")


def check_workers_present(stats: QueueStats, n_workers: int) -> Finding:
    name = "queue.workers"
    runnable = stats.counts["waiting"] + stats.counts["prioritized"] + stats.delayed_past_due
    held = stats.counts["paused"]
    if n_workers > 0:
        return Finding(name, "ok", f"{n_workers} worker connection(s) on '{stats.queue}'")
    fix = "start the worker (aixsss-ops stack up / check the worker's logs and its REDIS_URL, AI_QUEUE_NAME)"
    if runnable > 0:
        return Finding(name, "fail", f"{runnable} job(s) waiting on '{stats.queue}' and no worker is connected", fix)
    if held > 0:
        return Finding(name, "warn", f"'{stats.queue}' is paused with {held} job(s) held and no worker is connected", fix)
    return Finding(name, "warn", f"no worker is connected to '{stats.queue}' (nothing is waiting)", fix)


def check_oldest_waiting(stats: QueueStats, threshold_s: float = OLDEST_WAITING_THRESHOLD_S) -> Finding:
    name = "queue.oldest-waiting"
    age = stats.oldest_waiting_age_s
    if age is None:
        return Finding(name, "ok", "no job is waiting")
    if age > threshold_s:
        why = " (the queue is paused)" if stats.paused else ""
        return Finding(name, "warn", f"the oldest waiting job ({stats.oldest_waiting_job}) has waited {age:.0f}s, "
                       f"more than {threshold_s:.0f}s{why}",
                       "resume the queue" if stats.paused else "add worker capacity or look at what blocks the workers")
    return Finding(name, "ok", f"the oldest waiting job has waited {age:.0f}s")


def check_failed_rising(stats: QueueStats, min_failures: int = FAILED_RISING_MIN) -> Finding:
    name = "queue.failed-rising"
    now, before = stats.failed_last_15m, stats.failed_prev_15m
    minutes = RECENT_WINDOW_S // 60
    if now >= min_failures and now > before:
        return Finding(name, "warn", f"{now} job(s) failed in the last {minutes} min, up from {before} in the "
                       f"{minutes} min before", "look at `aixsss-ops queue failed` for the reasons")
    return Finding(name, "ok", f"{now} failure(s) in the last {minutes} min ({before} in the {minutes} before)")


def _config_get(r, param: str) -> str | None:
    import redis

    try:
        return r.config_get(param).get(param)
    except redis.ResponseError:
        return None


def queue_findings(redis_url: str, queue: str, envs: Mapping[str, Mapping[str, str]] | None = None, *,
                   prefix: str = DEFAULT_PREFIX, oldest_threshold_s: float = OLDEST_WAITING_THRESHOLD_S,
                   timeout: float = DEFAULT_TIMEOUT) -> list[Finding]:
    """All queue checks. ``envs`` is ``{'api': {...}, 'worker': {...}}`` (``conn.service_envs(cfg)``)."""
    from aixsss_ops.queue.inspect import read_stats
    from aixsss_ops.queue.workers import read_workers

    findings = []
    with connect(redis_url, timeout) as r:
        findings.append(check_maxmemory_policy(_config_get(r, "maxmemory-policy")))
        findings.append(check_persistence(_config_get(r, "appendonly"), _config_get(r, "save")))
        if envs is not None:
            findings.append(check_queue_name_match(envs))
        st = read_stats(r, queue, prefix=prefix)
        try:
            n_workers = len(read_workers(r, queue, prefix))
        except Exception as e:  # CLIENT LIST disabled: say so instead of guessing
            findings.append(Finding("queue.workers", "warn", f"cannot list workers: {e}"))
        else:
            findings.append(check_workers_present(st, n_workers))
        findings.append(check_oldest_waiting(st, oldest_threshold_s))
        findings.append(check_failed_rising(st))
    return findings
