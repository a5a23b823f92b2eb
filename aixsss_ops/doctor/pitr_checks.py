"""Doctor's point-in-time recovery checks (``backup.pitr`` on; none otherwise): archiving works, the newest archived
WAL against ``backup.rpo_seconds``, the newest base backup, the object store's lifecycle rule against the window,
the repository's free space."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aixsss_ops.doctor.context import Context
from aixsss_ops.findings import Finding

BASE_MAX_AGE_S = 2 * 86400  # the default calendars take one every day: two days without one is a missed run
SPACE_MIN_FREE = 0.10  # below it a warning
SPACE_FAIL_FREE = 0.02  # below it a failure: archiving and base backups are about to fail


def _engine(ctx: Context):
    from aixsss_ops.backup.pitr import engine_for

    if not ctx.cfg.backup.pitr:
        return None
    return engine_for(ctx.cfg, ctx.dep.layout, write_config=False, runtime=ctx.stack.runtime)


def _secs(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else (f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h")


def archiving(ctx: Context) -> list[Finding]:
    """``pgbackrest check``: a WAL segment switched, archived and found in the repository."""
    from aixsss_ops.errors import OpsError

    eng = _engine(ctx)
    if eng is None:
        return []
    name = "backup.pitr-archiving"
    problem = eng.site.config_problem()
    if problem:
        return [Finding(name, "fail", problem, "`aixsss-ops stack up` writes it (and restarts Postgres with archiving)")]
    try:
        eng.check(timeout=max(1.0, ctx.timeout - 0.3))
    except OpsError as e:
        try:
            exists = eng.info().exists
        except OpsError as unreadable:  # the cause: no stanza-create helps there
            return [Finding(name, "fail", f"{e.message}; {unreadable.message}",
                            "pgBackRest (the cluster's account) cannot read the repository: check its ownership, "
                            f"permissions and info files; {unreadable.hint}")]
        hints = [h for h in (e.hint or "").split("; ") if h and (not exists or "stanza-create" not in h)]
        hints += [] if exists else ["`aixsss-ops backup base` creates the stanza"]
        return [Finding(name, "fail", e.message, "; ".join([*hints, "`aixsss-ops stack logs postgres`"]))]
    return [Finding(name, "ok", f"pgbackrest check: WAL archived to stanza {eng.stanza}")]


def interrupted_restore(ctx: Context) -> list[Finding]:
    """A ``restore --to-time`` killed on its way: its journal names the folder it left and the app units it stopped
    (a running restore holds the deploy lock: that one is not interrupted)."""
    from aixsss_ops.backup.pitr import journal_path
    from aixsss_ops.deploy.lock import DeployLock
    from aixsss_ops.fsutil import read_json

    if not ctx.cfg.backup.pitr:
        return []
    name = "backup.pitr-restore"
    j = read_json(journal_path(ctx.dep.layout), None)
    if not j:
        return [Finding(name, "ok", "no interrupted restore --to-time")]
    if DeployLock(ctx.dep.layout.deploy_dir).info().held:
        return [Finding(name, "ok", f"a restore --to-time to {j.get('target')} is running")]
    stopped = ", ".join(f"{s}-{c}" if c else s for s, c in j.get("stopped") or [])
    # the app stopped or the restored folder swapped in: unfinished (and `stack up` refuses until it is finished)
    return [Finding(name, "fail" if j.get("phase") or stopped else "warn",
                    f"an interrupted restore --to-time (to {j.get('target')}) left {j.get('new')}"
                    + (f" and stopped {stopped}" if stopped else "") + (f" (phase {j['phase']})" if j.get("phase") else ""),
                    f"`aixsss-ops --yes restore --to-time {j.get('target')}` finishes it (undoes it when it was killed "
                    "before the swap); `stack up` is refused until then")]


def wal_age(ctx: Context) -> list[Finding]:
    """The newest archived WAL against the RPO. An idle database closes no segment (archive_timeout switches only
    after writes), so an old newest segment fails only when more than the current segment is unarchived or the
    archiver reports failures."""
    from aixsss_ops.backup.pitr import newest_wal, segment_end_lsn, window
    from aixsss_ops.dburl import parse_database_url

    eng = _engine(ctx)
    if eng is None:
        return []
    name = "backup.pitr-wal"
    rpo = ctx.cfg.backup.rpo_seconds
    info = eng.info()
    if not info.exists:
        return [Finding(name, "fail", "the pgBackRest stanza does not exist: no WAL is archived",
                        "`aixsss-ops backup base` creates it")]
    files, timelines = eng.wal_files(info.archive_id)
    newest = newest_wal(files)
    if newest is None:
        return _none_archived(ctx, eng, info, name)
    gap = eng.gap(info, files, timelines)
    if gap:
        return [Finding(name, "fail", f"the archived WAL has a gap: the point-in-time recovery window is "
                                      f"{window(info, newest, gap).text()}",
                        "an instant before the gap cannot be restored; take a base backup (`aixsss-ops backup "
                        "base`) if none ends after it")]
    age = (datetime.now(UTC) - newest).total_seconds()
    msg = f"newest archived WAL {files[-1].segment} is {_secs(age)} old (RPO {rpo:g}s)"
    if age <= rpo:
        return [Finding(name, "ok", msg)]
    if not ctx.database_url:
        return [Finding(name, "warn", msg + "; the database was not asked whether it wrote since")]
    with parse_database_url(ctx.dep.admin_database.value).connect(timeout=ctx.net_timeout) as c:
        lsn, failed_after = c.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, "
            "coalesce(last_failed_time > coalesce(last_archived_time, 'epoch'), false) FROM pg_stat_archiver"
        ).fetchone()
        seg_size = int(c.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0])
    newest_seg = max(files, key=lambda w: w.segment[8:]).segment
    behind = lsn - segment_end_lsn(newest_seg, seg_size)
    if behind > seg_size and not failed_after:  # listed before the LSN was read: a segment switched in between (by
        files, _tl = eng.wal_files(info.archive_id)  # backup.pitr-archiving's `pgbackrest check`, running beside this
        newest_seg = max(files, key=lambda w: w.segment[8:]).segment  # one) may be archived by now: list again
        behind = lsn - segment_end_lsn(newest_seg, seg_size)
    if failed_after:
        return [Finding(name, "fail", msg + "; the archiver's last attempt failed",
                        f"see pgBackRest's log in {eng.site.log_hint}")]
    if behind > seg_size:
        return [Finding(name, "fail", msg + f"; {behind / 2**20:.0f} MB of WAL not archived",
                        f"archiving is behind: see pgBackRest's log in {eng.site.log_hint}")]
    return [Finding(name, "ok", msg + "; nothing unarchived beyond the current segment (an idle database)")]


def _none_archived(ctx: Context, eng, info, name: str) -> list[Finding]:
    """No segment in the archive. A cluster that has completed none (nothing waits in its archive status folder,
    no attempt failed) has nothing to archive yet: ok. One that archived a segment meanwhile (backup.pitr-archiving's
    `pgbackrest check`, running beside this check, switches one and waits for it): listed again."""
    from aixsss_ops.backup.pitr import newest_wal
    from aixsss_ops.dburl import parse_database_url

    hint = "`aixsss-ops doctor --only backup.pitr-archiving`"
    if not ctx.database_url:
        return [Finding(name, "fail", "no WAL archived yet", hint)]
    deadline = time.monotonic() + min(3.0, ctx.timeout / 2)
    with parse_database_url(ctx.dep.admin_database.value).connect(timeout=ctx.net_timeout) as c:
        while True:  # a segment being archived now (ready, no attempt failed): waited for a moment
            archived, failed, ready = c.execute(
                "SELECT archived_count, last_failed_time IS NOT NULL, (SELECT count(*) FROM "
                "pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready') FROM pg_catalog.pg_stat_archiver"
            ).fetchone()
            if archived or failed or not ready or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
    if archived:
        files, _tl = eng.wal_files(info.archive_id)
        newest = newest_wal(files)
        if newest is None:
            return [Finding(name, "fail", f"Postgres archived {archived} WAL segment(s), but none is in the "
                                          "repository", hint)]
        age = (datetime.now(UTC) - newest).total_seconds()
        rpo = ctx.cfg.backup.rpo_seconds
        return [Finding(name, "ok" if age <= rpo else "warn",
                        f"newest archived WAL {files[-1].segment} is {_secs(age)} old (RPO {rpo:g}s)")]
    if failed:
        return [Finding(name, "fail", "no WAL archived yet; the archiver's attempts failed",
                        f"see pgBackRest's log in {eng.site.log_hint}")]
    if ready:
        return [Finding(name, "fail", f"no WAL archived yet; {ready} completed segment(s) wait to be archived", hint)]
    return [Finding(name, "ok", "no WAL segment completed yet: none waits to be archived (a fresh, idle cluster)")]


def base_backup(ctx: Context) -> list[Finding]:
    eng = _engine(ctx)
    if eng is None:
        return []
    name = "backup.pitr-base"
    info = eng.info()
    if not info.backups:
        return [Finding(name, "fail", "no pgBackRest base backup: the point-in-time window is empty",
                        "take one (`aixsss-ops backup base`) and schedule them (`aixsss-ops backup schedule`)")]
    b = info.backups[-1]
    age = (datetime.now(UTC) - b.stopped).total_seconds()
    msg = (f"newest base backup {b.label} ({b.type}) is {_secs(age)} old; window from "
           f"{info.backups[0].stopped:%Y-%m-%d %H:%M:%S}Z")
    if age > BASE_MAX_AGE_S:
        return [Finding(name, "warn", msg, "check the schedule (`aixsss-ops backup schedule`): a restore replays "
                                           "all WAL since the newest base backup")]
    return [Finding(name, "ok", msg)]


def lifecycle_and_space(ctx: Context) -> list[Finding]:
    """Noncurrent object versions expire with the window (not before: T inside it needs them; not never: the window
    is all that is kept); the local repository's file system has room."""
    from aixsss_ops.backup import objects

    eng = _engine(ctx)
    if eng is None:
        return []
    out = []
    days = ctx.cfg.backup.pitr_retention_days + 1
    name = "backup.pitr-lifecycle"
    s3, bucket = ctx.dep.s3, ctx.dep.bucket
    warnings, _ = objects.lifecycle_warnings(s3, bucket, days)
    try:
        cfg = s3.client(timeout=ctx.net_timeout).get_bucket_lifecycle(bucket)
        rules = [r for r in (cfg.rules if cfg else []) if r.noncurrent_version_expiration]
    except Exception:
        rules = []
    if warnings:
        out.append(Finding(name, "fail", warnings[0], "a point-in-time restore inside the window would miss object "
                                                      "versions: lengthen the rule"))
    elif not rules:
        out.append(Finding(name, "warn", f"bucket {bucket} has no rule expiring noncurrent versions: they are kept "
                                         f"beyond the {ctx.cfg.backup.pitr_retention_days}-day window",
                           "`aixsss-ops backup base` adds one"))
    else:
        out.append(Finding(name, "ok", f"bucket {bucket}: noncurrent versions expire after "
                                       f"{rules[0].noncurrent_version_expiration.noncurrent_days} day(s), "
                                       f"window {ctx.cfg.backup.pitr_retention_days} day(s)"))
    usage = eng.site.repo_usage()  # None: a bucket
    if usage is not None:
        where, free_b, total = usage
        free = free_b / total if total else 0.0
        f = Finding("backup.pitr-space", "ok" if free >= SPACE_MIN_FREE else "warn" if free >= SPACE_FAIL_FREE else "fail",
                    f"repository file system ({where}) {free:.0%} free ({free_b / 2**30:.1f} GB)",
                    None if free >= SPACE_MIN_FREE else "free space or shorten backup.pitr_retention_days")
        out.append(f)
    return out
