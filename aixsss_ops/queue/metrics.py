"""Queue statistics in the Prometheus text exposition format (for node-exporter's textfile collector)."""

from __future__ import annotations

from aixsss_ops.queue.inspect import QueueStats


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render(stats: QueueStats, n_workers: int | None = None) -> str:
    q = f'queue="{_esc(stats.queue)}"'
    lines: list[str] = []

    def metric(name: str, help_: str, samples: list[tuple[str, float | int]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            lines.append(f"{name}{{{labels}}} {_num(value)}")

    metric("aixsss_queue_jobs", "Jobs per BullMQ state, as BullMQ 5 getJobCounts() reports them.",
           [(f'{q},state="{_esc(s)}"', n) for s, n in stats.counts.items()])
    metric("aixsss_queue_exists", "1 when the queue has keys in Redis.", [(q, stats.exists)])
    metric("aixsss_queue_paused", "1 when the queue is paused.", [(q, stats.paused)])
    metric("aixsss_queue_delayed_past_due", "Delayed jobs whose time has come but have not been promoted.",
           [(q, stats.delayed_past_due)])
    if stats.oldest_waiting_age_s is not None:
        metric("aixsss_queue_oldest_waiting_age_seconds", "Age of the oldest waiting job.",
               [(q, stats.oldest_waiting_age_s)])
    if stats.failure_rate is not None:
        metric("aixsss_queue_failure_ratio", "failed / (failed + completed) over the retained window.",
               [(q, stats.failure_rate)])
    metric("aixsss_queue_failed_last_15m", "Jobs that failed in the last 15 minutes.", [(q, stats.failed_last_15m)])
    if n_workers is not None:
        metric("aixsss_queue_workers", "Worker connections (CLIENT LIST, as BullMQ getWorkers).", [(q, n_workers)])
    return "\n".join(lines) + "\n"
