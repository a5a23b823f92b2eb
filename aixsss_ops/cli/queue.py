"""`aixsss-ops queue`: BullMQ depth, workers and controls. Thin: parse, confirm, call one domain function, render."""

from __future__ import annotations

import time

import typer

from aixsss_ops.cli.common import confirm, state
from aixsss_ops.errors import CheckFailed, UsageError

app = typer.Typer(help="Inspect and control the BullMQ queue: depth, workers, pause/resume, failed jobs.",
                  no_args_is_help=True)

RedisUrl = typer.Option(None, "--redis-url", help="Redis URL (default: REDIS_URL, the env files, then ops.toml).")
QueueName = typer.Option(None, "--queue", help="Queue name (default: AI_QUEUE_NAME, the env files, then ops.toml).")
JsonFlag = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
WATCH_MAX = 86400.0  # seconds: the slowest --watch refresh
LIMIT_MAX = 1_000_000_000  # the largest --limit (queue.control.LIMIT_MAX: checked again there)
TIMEOUT_MAX = 7 * 86400.0  # the longest drain-wait --timeout (queue.control.TIMEOUT_MAX)


def _target(ctx: typer.Context, redis_url: str | None, queue: str | None, json_out: bool):
    from aixsss_ops.queue.conn import target

    st = state(ctx)
    if json_out:
        st.out.json_mode = True
    return st, target(st.deployment.with_flags(REDIS_URL=redis_url, AI_QUEUE_NAME=queue))


def _stats_renderable(s):
    """A rich table of the counts and a few lines of derived facts (also what --watch refreshes)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"queue {s.queue}" + (" (paused)" if s.paused else "") + f" at {s.checked_at}")
    t.add_column("state")
    t.add_column("jobs", justify="right")
    for k, v in s.counts.items():
        t.add_row(k, str(v))
    oldest = "-" if s.oldest_waiting_age_s is None else f"{s.oldest_waiting_age_s:.1f}s (job {s.oldest_waiting_job})"
    rate = "-" if s.failure_rate is None else (
        f"{s.failure_rate:.1%} ({s.failed_in_window} failed / {s.completed_in_window} completed "
        f"over the retained {s.failure_window_s:.0f}s)")
    lines = [
        f"layout: {s.layout} ({s.layout_evidence})",
        f"oldest waiting: {oldest}",
        f"delayed past due: {s.delayed_past_due}",
        f"failure rate: {rate}",
        f"failed last 15m: {s.failed_last_15m} (15m before: {s.failed_prev_15m})",
        *s.notes,
    ]
    return Group(t, Text("\n".join(lines)))


@app.command("stats")
def stats_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    fmt: str = typer.Option("table", "--format", help="table or prometheus (text exposition format)."),
    watch: float = typer.Option(0, "--watch", help="Refresh every N seconds until Ctrl-C.", min=0, max=WATCH_MAX),
) -> None:
    """Job counts exactly as BullMQ's getJobCounts, plus paused flag, oldest waiting age and failure rate."""
    from aixsss_ops.queue.inspect import stats

    st, t = _target(ctx, redis_url, queue, json_out)
    if fmt not in ("table", "prometheus"):
        raise UsageError("--format must be 'table' or 'prometheus'")
    if watch and (st.out.json_mode or fmt == "prometheus"):
        raise UsageError("--watch is for the table; it cannot be combined with --json or --format prometheus")
    if fmt == "prometheus":
        from aixsss_ops.queue.metrics import render

        typer.echo(render(stats(t.redis_url, t.queue)), nl=False)
        return
    if not watch:
        s = stats(t.redis_url, t.queue)
        st.out.emit({**s.to_dict(), "redis_url": t.to_dict()["redis_url"]},
                    lambda _d: st.out.console.print(_stats_renderable(s)))
        return
    from rich.live import Live

    try:
        if not st.out.console.is_terminal:  # a pipe or a log: print one snapshot per refresh
            while True:
                st.out.console.print(_stats_renderable(stats(t.redis_url, t.queue)))
                st.out.console.file.flush()
                time.sleep(watch)
        with Live(_stats_renderable(stats(t.redis_url, t.queue)), console=st.out.console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                live.update(_stats_renderable(stats(t.redis_url, t.queue)), refresh=True)
    except KeyboardInterrupt:
        return


@app.command("workers")
def workers_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    check: bool = typer.Option(False, "--check", help="Exit 3 when no worker is connected."),
) -> None:
    """Workers connected to the queue (CLIENT LIST, as BullMQ's getWorkers), with address, idle time and name."""
    from aixsss_ops.queue.workers import workers

    st, t = _target(ctx, redis_url, queue, json_out)
    ws = workers(t.redis_url, t.queue)
    hint = ("no workers: start the worker service and check its REDIS_URL and AI_QUEUE_NAME "
            f"(it must consume '{t.queue}')")
    data = {"queue": t.queue, "count": len(ws), "workers": [w.to_dict() for w in ws],
            "finding": None if ws else {"check": "queue.workers", "status": "fail" if check else "warn",
                                        "message": f"no worker is connected to '{t.queue}'", "fix": hint}}

    def human(_d):
        if ws:
            st.out.table(f"workers on {t.queue}", ["addr", "name", "idle", "age", "client", "flavor"],
                         [(w.addr, w.name or "", f"{w.idle_s}s", f"{w.age_s}s", w.client_name, w.flavor) for w in ws])
        else:
            st.out.warn(f"no worker is connected to '{t.queue}'")
            st.out.info(f"hint: {hint}")

    if ws or not check:
        st.out.emit(data, human)
        return
    if st.out.json_mode:
        st.out.emit({**data, "ok": False, "exit_code": 3})
        raise typer.Exit(3)
    raise CheckFailed(f"no worker is connected to '{t.queue}'", hint=hint)


@app.command("pause")
def pause_cmd(ctx: typer.Context, redis_url: str = RedisUrl, queue: str = QueueName, json_out: bool = JsonFlag) -> None:
    """Pause the queue globally: workers stop taking new jobs; active jobs finish."""
    from aixsss_ops.queue.control import pause

    st, t = _target(ctx, redis_url, queue, json_out)
    res = pause(t.redis_url, t.queue)
    st.out.emit(res.to_dict(), lambda _d: st.out.console.print(res.message))


@app.command("resume")
def resume_cmd(ctx: typer.Context, redis_url: str = RedisUrl, queue: str = QueueName, json_out: bool = JsonFlag) -> None:
    """Resume a paused queue (either BullMQ layout)."""
    from aixsss_ops.queue.control import resume

    st, t = _target(ctx, redis_url, queue, json_out)
    res = resume(t.redis_url, t.queue)
    st.out.emit(res.to_dict(), lambda _d: st.out.console.print(res.message))


@app.command("drain-wait")
def drain_wait_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds to wait at most.", min=0, max=TIMEOUT_MAX),
) -> None:
    """Wait until no job is active (pause first so no new job starts). Exit 1 on timeout."""
    from aixsss_ops.queue.control import drain_wait

    st, t = _target(ctx, redis_url, queue, json_out)
    res = drain_wait(t.redis_url, t.queue, timeout)
    if res.drained:
        st.out.emit(res.to_dict(), lambda _d: st.out.console.print(f"{t.queue}: {res.message}"))
        return
    if st.out.json_mode:
        st.out.emit({**res.to_dict(), "ok": False, "exit_code": 1})
    st.out.error(f"{t.queue}: {res.message}", hint="raise --timeout, or look at the active jobs")
    raise typer.Exit(1)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


@app.command("failed")
def failed_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    limit: int = typer.Option(20, "--limit", help="How many (most recent first).", min=1,
                               max=LIMIT_MAX),
) -> None:
    """Recently failed jobs: name, attempts, failedReason (truncated) and timestamps."""
    from aixsss_ops.output import scrubber
    from aixsss_ops.queue.control import failed_jobs

    st, t = _target(ctx, redis_url, queue, json_out)
    scrubber.add(*st.deployment.secrets())  # a failedReason may echo any of them (a provider's error)
    jobs = failed_jobs(t.redis_url, t.queue, limit)

    def human(_d):
        if not jobs:
            st.out.console.print(f"no failed jobs on '{t.queue}'")
            return
        st.out.table(f"failed jobs on {t.queue}", ["id", "name", "attempts", "failed at", "reason"], [
            (j.id, j.name, f"{j.attempts_made}/{j.attempts}" if j.attempts else j.attempts_made, j.finished_at,
             _cut(j.failed_reason or "", 80)) for j in jobs])

    st.out.emit({"queue": t.queue, "count": len(jobs), "jobs": [j.to_dict() for j in jobs]}, human)


@app.command("retry-failed")
def retry_failed_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    name: list[str] = typer.Option(None, "--name", help="Only jobs with this name (repeatable)."),
    limit: int = typer.Option(None, "--limit", help="At most N jobs (oldest failures first).",
                               min=1, max=LIMIT_MAX),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be retried; change nothing."),
) -> None:
    """Move failed jobs back to waiting, as BullMQ's retryJobs does."""
    from aixsss_ops.queue.control import retry_failed

    st, t = _target(ctx, redis_url, queue, json_out)
    if not dry_run:
        plan = retry_failed(t.redis_url, t.queue, names=name, limit=limit, dry_run=True)
        if plan.planned == 0:
            st.out.emit(plan.to_dict() | {"dry_run": False, "message": "no failed jobs to retry"},
                        lambda _d: st.out.console.print(f"no failed jobs to retry on '{t.queue}'"))
            return
        confirm(st, f"Retry {plan.planned} failed job(s) on '{t.queue}'?")
    res = retry_failed(t.redis_url, t.queue, names=name, limit=limit, dry_run=dry_run)

    def human(_d):
        st.out.console.print(res.message)
        if dry_run and res.job_ids:
            st.out.console.print("jobs: " + ", ".join(res.job_ids) + (" …" if res.planned > len(res.job_ids) else ""))

    st.out.emit(res.to_dict(), human)


@app.command("clean")
def clean_cmd(
    ctx: typer.Context,
    redis_url: str = RedisUrl,
    queue: str = QueueName,
    json_out: bool = JsonFlag,
    job_state: str = typer.Option(..., "--state", help="completed or failed."),
    older_than: str = typer.Option(..., "--older-than", help="Finished more than this long ago: 30m, 12h, 7d…"),
    limit: int = typer.Option(None, "--limit", help="At most N jobs.", min=1, max=LIMIT_MAX),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be removed; change nothing."),
) -> None:
    """Remove completed or failed jobs older than a duration, as BullMQ's Queue.clean does."""
    from aixsss_ops.queue.control import clean, parse_duration

    st, t = _target(ctx, redis_url, queue, json_out)
    seconds = parse_duration(older_than)
    if job_state not in ("completed", "failed"):
        raise UsageError("--state must be 'completed' or 'failed'")
    if not dry_run:
        plan = clean(t.redis_url, t.queue, job_state, seconds, limit=limit, dry_run=True)
        if plan.planned:
            confirm(st, f"Remove {plan.planned} {job_state} job(s) older than {older_than} from '{t.queue}'?")
    res = clean(t.redis_url, t.queue, job_state, seconds, limit=limit, dry_run=dry_run)

    def human(_d):
        st.out.console.print(res.message)
        if dry_run and res.job_ids:
            st.out.console.print("jobs: " + ", ".join(res.job_ids) + (" …" if res.planned > len(res.job_ids) else ""))

    st.out.emit(res.to_dict(), human)
