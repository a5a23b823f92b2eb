"""`aixsss-ops backup`: one restore point for Postgres and the object store; list, verify, restore, prune.

Thin: parse, confirm, call the backup use cases (aixsss_ops.usecases.backup) with the deployment, render.
"""

from __future__ import annotations

import sys

import typer

from aixsss_ops.cli.common import State, confirm, state

app = typer.Typer(help="Backups: Postgres dumps + S3 object versions as one restore point; list, verify, restore, "
                       "prune.", no_args_is_help=True)

URL_HELP = "PostgreSQL URL (else $DATABASE_URL, else the embedded stack's superuser URL)."
DatabaseUrl = typer.Option(None, "--database-url", help=URL_HELP, show_default=False)
Jobs = typer.Option(None, "--jobs", "-j", min=1, help="Parallel jobs for pg_dump/pg_restore (default: backup.jobs, "
                                                      "0 = cores).", show_default=False)
NoObjects = typer.Option(False, "--no-objects", help="Leave the object store out (database only).")


def _uc():
    from aixsss_ops.usecases import backup

    return backup


def _dep(st: State, database_url: str | None = None):
    return st.deployment.with_flags(DATABASE_URL=database_url)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _age(iso: str | None) -> str:
    from aixsss_ops.backup.manifest import parse_iso, utcnow

    if not iso:
        return "-"
    s = (utcnow() - parse_iso(iso)).total_seconds()
    for unit, width in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= width:
            return f"{s / width:.0f}{unit}"
    return f"{s:.0f}s"


class _Progress:
    """Rich progress (bytes dumped, tables checksummed) on a TTY; phase lines otherwise."""

    def __init__(self, st: State):
        self.st = st
        self.bar = None
        if not st.out.json_mode and not st.out.quiet and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn(),
                                console=st.out.err, transient=True)
            self.dump = self.bar.add_task("dump (compressed bytes / database size)", total=None)
            self.tables = self.bar.add_task("tables checksummed", total=None)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def phase(self, message: str) -> None:
        if self.bar:
            self.bar.console.print(message, markup=False)
        else:
            self.st.out.info(message)

    def dumped(self, nbytes: int, total: int | None) -> None:
        if self.bar:
            self.bar.update(self.dump, completed=nbytes, total=total)

    def table(self, done: int, total: int, name: str) -> None:
        if self.bar:
            self.bar.update(self.tables, completed=done, total=total, description=f"tables checksummed ({name})")

    def warn(self, message: str) -> None:
        self.st.out.warn(message)


@app.command()
def create(
    ctx: typer.Context,
    label: str = typer.Option(None, "--label", "-l", help="A free-text label shown by `backup list`."),
    keep: bool = typer.Option(False, "--keep", help="Mark the backup so that prune never deletes it."),
    jobs: int = Jobs,
    database_url: str = DatabaseUrl,
    no_objects: bool = NoObjects,
    encrypt: bool = typer.Option(None, "--encrypt/--no-encrypt", help="Override backup.encrypt.", show_default=False),
) -> None:
    """Take one restore point: pg_dump (directory, parallel) + globals + per-table checksums + the object manifest."""
    st = state(ctx)
    with _Progress(st) as prog:
        result = _uc().create(_dep(st, database_url), label=label, keep=keep, requested_jobs=jobs,
                              with_objects=not no_objects, encrypt=encrypt, reporter=prog)

    def human(d):
        c = st.out.console
        c.print(f"backup {d['id']} complete: {d['tables']} tables, {d['rows']} rows, "
                f"{'-' if d['objects'] is None else d['objects']} objects; dump {_size(d['dump_size'])} of a "
                f"{_size(d['database_size'])} database in {d['duration_s']:.1f}s"
                + (" (encrypted)" if d["encrypted"] else ""), markup=False)
        c.print(f"snapshot at {d['created_at']}; stored in {d['path']}", markup=False)

    st.out.emit(result.to_dict(), human)


@app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Backups ordered by snapshot time (oldest first): id, time, label, sizes, objects, status, age, last verified;
    with backup.pitr on, the point-in-time window and base backups too. --json: {"backups": [...], "pitr": ...}.
    With backup.pitr on and a repository that cannot be read, the backups are listed, then the error (in --json:
    pitr = {"error": ..., "hint": ...}), exit 1."""
    st = state(ctx)
    cat = _uc().catalog(st.deployment)
    rows = [e.summary() for e in cat.entries()]
    pitr_status = None
    failed = None
    if st.config.backup.pitr:
        from aixsss_ops.errors import OpsError
        from aixsss_ops.usecases import pitr

        try:
            pitr_status = pitr.status(st.deployment).to_dict()
        except OpsError as e:  # the logical backups are listed all the same; the command fails with its code
            pitr_status = {"error": e.message, "hint": e.hint}
            failed = e

    def human(doc):
        if pitr_status is not None and failed is None:
            _show_pitr(st, pitr_status)
        data = doc["backups"]
        if not data:
            st.out.info(f"no backups in {cat.location}")
            return
        st.out.table(None, ["id", "time", "label", "db size", "dump", "objects", "status", "age", "verified"], [
            (r["id"], r["created_at"] or "-", r["label"] or "", _size(r["database_size"]), _size(r["dump_size"]),
             "-" if r["objects"] is None else r["objects"],
             r["status"] + (" keep" if r["keep"] else "") + (" enc" if r["encrypted"] else ""),
             _age(r["created_at"]),
             "-" if not r["last_verified"] else f"{r['last_verified']} ({'ok' if r['last_verify_ok'] else 'FAILED'})")
            for r in data], whole=["id"])  # the id is what restore needs: never cut

    st.out.emit({"backups": rows, "pitr": pitr_status}, human)  # pitr: None with backup.pitr off
    if failed is not None:
        if not st.out.json_mode:
            st.out.error(f"point-in-time recovery: {failed.message}", failed.hint)
        raise typer.Exit(failed.exit_code)


def _show_pitr(st: State, p: dict) -> None:
    c = st.out.console
    w = p["window"]
    c.print(f"point-in-time recovery window: {w['from'] or 'empty (no base backup: `aixsss-ops backup base`)'}"
            f"{' .. ' + w['to'] if w['from'] and w['to'] else ''}; archived WAL {p['wal_segments']} segment(s), "
            f"{_size(p['wal_bytes'])}, newest {p['newest_wal_at'] or '-'}", markup=False)
    if p["base_backups"]:
        st.out.table(None, ["base backup", "type", "consistent at", "size", "in repo"], [
            (b["label"], b["type"], b["stopped_at"], _size(b["size"]), _size(b["repo_size"]))
            for b in p["base_backups"]], whole=["base backup"])


@app.command()
def verify(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., metavar="ID", help="Backup id (or 'latest')."),
    restore: bool = typer.Option(False, "--restore", help="Also restore into a scratch database and compare every "
                                                          "table; check every recorded object version."),
    jobs: int = Jobs,
    database_url: str = DatabaseUrl,
    no_objects: bool = NoObjects,
) -> None:
    """Check every file's SHA-256; with --restore prove the backup restores. Exit 3 on any mismatch, naming it.

    A backup taken with a backup key has a signed manifest (manifest.hmac); verify checks the signature with the key
    in backup.encryption_key_env (AIXSSS_BACKUP_ENCRYPTION_KEY by default) and, without that key, refuses with
    exit 3: checksums alone would pass a manifest rewritten to match altered files."""
    st = state(ctx)
    dep = _dep(st, database_url)
    cat = _uc().catalog(dep)
    res = _uc().verify(dep, cat, cat.get(backup_id), restore=restore, with_objects=not no_objects,
                       requested_jobs=jobs, say=st.out.info)

    def human(d):
        for p in d["problems"]:
            st.out.error(p)
        for n in d["notes"]:
            st.out.warn(n)
        if d["ok"]:
            extra = (f"; restored and compared {d['tables_compared']} tables, {d['objects_checked']} object versions"
                     if d["restored"] else "")
            manifest = {"authenticated": "manifest authenticated (HMAC-SHA256)",
                        "unauthenticated": "manifest unauthenticated (checksums only)",
                        "not checked": "manifest signature not checked (no key)"}[d["manifest"]]
            st.out.console.print(f"backup {d['id']}: {d['files_checked']} files ok; {manifest}{extra}", markup=False)

    st.out.emit(res.to_dict(), human)
    if not res.ok:
        raise typer.Exit(3)


@app.command()
def keep(
    ctx: typer.Context,
    backup_id: str = typer.Argument(..., metavar="ID"),
    unset: bool = typer.Option(False, "--unset", help="Remove the mark."),
) -> None:
    """Mark a backup so that prune never deletes it (or remove the mark)."""
    st = state(ctx)
    cat = _uc().catalog(st.deployment)
    entry = cat.get(backup_id)
    cat.update_meta(entry, keep=not unset)
    st.out.emit({"id": entry.id, "keep": not unset},
                lambda d: st.out.console.print(f"backup {d['id']}: keep = {d['keep']}", markup=False))


@app.command()
def prune(
    ctx: typer.Context,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be deleted; delete nothing."),
) -> None:
    """Apply the retention policy (backup.keep_last/keep_daily/keep_weekly); incomplete backups never count."""
    from aixsss_ops.backup.prune import Policy
    from aixsss_ops.backup.prune import prune as run

    st = state(ctx)
    b = st.config.backup
    policy = Policy(b.keep_last, b.keep_daily, b.keep_weekly)
    cat = _uc().catalog(st.deployment)
    if not dry_run:
        from aixsss_ops.backup.prune import plan_prune

        preview = plan_prune(cat.entries(), policy)
        if preview.delete:
            confirm(st, f"delete {len(preview.delete)} backup(s): {', '.join(preview.delete)}?")
    plan, cleaned = run(cat, policy, dry_run=dry_run)
    scratch: list[str] = []
    if not dry_run:
        from aixsss_ops.errors import OpsError

        try:  # the scratch databases of killed restores: the database may be elsewhere or down, prune goes on
            scratch = _uc().drop_scratch_orphans(st.deployment)
        except OpsError as e:
            st.out.warn(f"scratch databases of killed restores not checked: {e.message}")
    data = {**plan.to_dict(), "dry_run": dry_run, "cleaned": cleaned, "scratch_dropped": scratch}

    def human(d):
        c = st.out.console
        for bid, why in d["keep"].items():
            c.print(f"keep    {bid}  ({', '.join(why)})", markup=False)
        for bid in d["delete"]:
            c.print(f"{'would delete' if dry_run else 'deleted'} {bid}", markup=False)
        for name in d["cleaned"] or d["incomplete_remains"]:
            c.print(f"{'would remove' if dry_run else 'removed'} interrupted remains {name}", markup=False)
        for name in d["scratch_dropped"]:
            c.print(f"dropped {name} (the scratch database of a killed restore or verify)", markup=False)

    st.out.emit(data, human)


@app.command()
def cleanup(
    ctx: typer.Context,
    older_than: float = typer.Option(None, "--older-than", metavar="DAYS", min=0,
                                     help="Retention in days (default: backup.pre_restore_keep_days).",
                                     show_default=False),
    include_newest: bool = typer.Option(False, "--include-newest",
                                        help="Also drop the database kept by the newest restore."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be dropped; drop nothing."),
    database_url: str = DatabaseUrl,
) -> None:
    """Drop the databases restores kept (<db>_pre_restore_<time>) older than the retention; never the newest
    restore's unless --include-newest."""
    from aixsss_ops.backup import postgres as pgb
    from aixsss_ops.backup import previous

    st = state(ctx)
    pg = _uc().database(_dep(st, database_url))
    days = st.config.backup.pre_restore_keep_days if older_than is None else older_than
    admin = pgb.admin_target(pg)
    if not dry_run:
        preview = previous.plan_cleanup(previous.kept_databases(admin, pg.database), pg.database, days, include_newest)
        if preview.drop:
            confirm(st, f"drop {len(preview.drop)} database(s) kept by earlier restores: "
                        f"{', '.join(k.name for k in preview.drop)}?")
    plan, dropped = previous.cleanup(admin, pg.database, days, include_newest=include_newest, dry_run=dry_run)
    from aixsss_ops.backup.scratch import drop_orphans, orphans

    scratch = orphans(admin) if dry_run else drop_orphans(admin)
    data = {**plan.to_dict(), "dry_run": dry_run, "dropped": dropped, "scratch_dropped": scratch}

    def human(d):
        c = st.out.console
        if not d["drop"] and not d["keep"]:
            st.out.info(f"no databases kept by restores of {d['database']}")
        for name, why in d["keep"].items():
            c.print(f"keep    {name}  ({why})", markup=False)
        for k in d["drop"]:
            c.print(f"{'would drop' if dry_run else 'dropped'} {k['name']}  (restore of {k['at']}, "
                    f"{_size(k['size'])})", markup=False)
        for name in d["scratch_dropped"]:
            c.print(f"{'would drop' if dry_run else 'dropped'} {name}  (the scratch database of a killed restore or "
                    "verify)", markup=False)

    st.out.emit(data, human)


def restore_command(
    ctx: typer.Context,
    backup_id: str = typer.Argument(None, metavar="[ID]", help="Backup id (or 'latest'); none with --to-time.",
                                    show_default=False),
    to_time: str = typer.Option(None, "--to-time", metavar="T",
                                help="Point-in-time recovery (backup.pitr): the database and the objects as they "
                                     "were at T (ISO 8601 with a zone, or relative: -15m, -2h).", show_default=False),
    db_only: bool = typer.Option(False, "--db-only", help="Restore the database only."),
    objects_only: bool = typer.Option(False, "--objects-only", help="Restore the objects only."),
    target_db: str = typer.Option(None, "--target-db", metavar="NAME",
                                  help="Restore into a new database NAME instead of the live one."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and stop."),
    force: bool = typer.Option(False, "--force", help="Restore even a backup whose schema is newer than the "
                                                      "migrations this tool knows."),
    old_key: str = typer.Option(None, "--old-key",
                                help="The API_KEY_ENCRYPTION_KEY in force when the backup was taken (else "
                                     "API_KEY_ENCRYPTION_KEY_PREVIOUS)."),
    no_globals: bool = typer.Option(False, "--no-globals", help="Do not create the backup's roles that the server "
                                                                "lacks (globals.sql); existing roles are never changed."),
    checksums: bool = typer.Option(False, "--checksums", help="Before the swap, compare every table's checksum with "
                                                              "the manifest too (reads the restored data once more)."),
    jobs: int = Jobs,
    database_url: str = DatabaseUrl,
) -> None:
    """Restore a backup: the database (missing roles created, pg_restore into a scratch database with every file's
    SHA-256 checked meanwhile, row counts compared, swap) and the objects (recorded versions made current again).
    Prints the plan first; --dry-run stops there.

    With --to-time T (backup.pitr on): pgBackRest restores the base backup before T into a new data folder with WAL
    replay to T and promotion, swapped in for the live one (kept, named in the output), the objects rewound to T,
    provider keys re-encrypted when needed, the app restarted; prints the recovery point reached (the last commit
    at or before T). A T outside the window is refused with the window."""
    st = state(ctx)
    if to_time is not None:
        from aixsss_ops.errors import UsageError

        if backup_id:
            raise UsageError("give a backup ID or --to-time, not both")
        other = [flag for flag, on in (("--target-db", target_db), ("--force", force), ("--old-key", old_key),
                                       ("--no-globals", no_globals), ("--checksums", checksums), ("--jobs", jobs))
                 if on]
        if other:
            raise UsageError(f"{', '.join(other)} belong(s) to the restore of a backup ID, not to --to-time")
        if db_only and objects_only:
            raise UsageError("--db-only and --objects-only exclude each other")
        if objects_only:
            _rewind_objects(st, to_time, dry_run, database_url)
        else:
            _restore_to_time(st, to_time, dry_run, database_url, with_objects=not db_only)
        return
    if not backup_id:
        from aixsss_ops.errors import UsageError

        raise UsageError("missing the backup ID (or --to-time T)", hint="`aixsss-ops backup list` shows the ids")
    uc = _uc()
    dep = _dep(st, database_url)
    req = uc.RestoreRequest(db_only=db_only, objects_only=objects_only, target_db=target_db, force=force,
                            old_key=old_key, apply_globals=not no_globals, checksums=checksums)
    cat = uc.catalog(dep)
    with cat.fetch(cat.get(backup_id)) as entry:  # an S3 destination: downloaded first; a local one: itself
        plan = uc.plan(dep, entry, req)
        out = st.out
        if not out.json_mode:
            out.info(f"restore plan for backup {entry.id} (snapshot at {plan.created_at}):")
            for i, step in enumerate(plan.steps, 1):
                out.info(f"  {i}. {step}")
            for w in plan.warnings:
                out.warn(w)
        if dry_run:
            out.emit({"dry_run": True, "plan": plan.to_dict()}, lambda d: None)
            return
        live_db = plan.database is not None and plan.database["live"]
        if live_db or plan.objects is not None:
            what = []
            if live_db:
                what.append(f"replace the live database {plan.database['name']}")
            if plan.objects is not None:
                what.append(f"restore objects in bucket {plan.objects.bucket}")
            confirm(st, f"{' and '.join(what)} with backup {entry.id}?")
        res = uc.execute(dep, cat, entry, plan, requested_jobs=jobs, say=out.info)
    _show_restore(st, res)


def _show_restore(st: State, res: dict) -> None:
    out = st.out
    entry_id = res["backup"]

    def human(d):
        c = out.console
        if d["roles"]:
            r = d["roles"]
            if r["created"]:
                c.print(f"roles created from the backup's globals.sql: {', '.join(r['created'])}", markup=False)
            for w in r["warnings"]:
                out.warn(f"globals.sql: {w}")
        if d["database"]:
            db_ = d["database"]
            c.print(f"database {db_['name']} restored from backup {entry_id}: {db_['tables']} tables, {db_['rows']} "
                    "rows, identical to the backup", markup=False)
            if db_["previous"]:
                c.print(f"the previous database is kept as {db_['previous']} (undo: rename it back); `aixsss-ops "
                        f"backup cleanup` drops kept databases older than "
                        f"{st.config.backup.pre_restore_keep_days:g} day(s)", markup=False)
        if d["keys"]:
            c.print(f"provider keys: {d['keys']['reencrypted']} value(s) re-encrypted with the current key", markup=False)
        if d["objects"]:
            c.print(_objects_line(d["objects"]), markup=False)

    out.emit(res, human)


def _objects_line(o: dict) -> str:
    return f"objects: {o['copied']} version(s) made current, {o['delete_markers']} delete marker(s), " \
           f"{o['unchanged']} unchanged"


def _rewind_objects(st: State, to_time: str, dry_run: bool, database_url: str | None) -> None:
    from aixsss_ops.usecases import pitr_plan, pitr_restore

    dep = _dep(st, database_url)
    out = st.out
    if dry_run:
        res = pitr_restore.rewind_objects(dep, to_time, dry_run=True, say=out.info)
        o = res["objects"]
        out.emit(res, lambda d: out.console.print(
            f"rewind bucket {o['bucket']} to {d['target']}: {o['copy']} version(s) would be made current, "
            f"{o['delete_marker']} delete marker(s) added, {o['unchanged']} unchanged", markup=False))
        return
    at = pitr_plan.resolve_target(to_time)  # bad input is refused before the question; T does not move while asked
    confirm(st, f"rewind the objects (not the database) to {at}?")
    res = pitr_restore.rewind_objects(dep, at, say=out.info)
    out.emit(res, lambda d: out.console.print(f"{_objects_line(d['objects'])} (as at {d['target']})", markup=False))


def _restore_to_time(st: State, to_time: str, dry_run: bool, database_url: str | None,
                     with_objects: bool = True) -> None:
    from aixsss_ops.usecases import pitr_plan, pitr_restore

    dep = _dep(st, database_url)
    out = st.out
    if dry_run:
        res = pitr_restore.restore_to_time(dep, to_time, dry_run=True, with_objects=with_objects, say=out.info)

        def plan_human(d):
            p = d["plan"]
            out.console.print(f"point-in-time restore to {p['target']} (window {p['window']['from']} .. "
                              f"{p['window']['to']}):", markup=False)
            for i, step in enumerate(p["steps"], 1):
                out.console.print(f"  {i}. {step}", markup=False)
            for w in p["warnings"]:
                out.warn(w)

        out.emit(res, plan_human)
        return
    at = pitr_plan.resolve_target(to_time)
    objs = " and rewind the objects" if with_objects else " (not the objects)"
    confirm(st, f"replace the live database cluster{objs} to {at}? (the live data folder is kept)")
    res = pitr_restore.restore_to_time(dep, at, with_objects=with_objects, say=out.info)

    def human(d):
        c = out.console
        c.print(f"database restored from base backup {d['base_backup']}: recovery point {d['recovery_point']} "
                f"({d['recovery_point_source']}; target {d['target']})", markup=False)
        c.print(f"the previous data folder is kept as {d['kept_data_dir']}: drop it (rm -rf) once you no longer "
                "need it", markup=False)
        if d["objects"]:
            c.print(_objects_line(d["objects"]), markup=False)
        if d["keys"] and d["keys"].get("reencrypted"):
            c.print(f"provider keys: {d['keys']['reencrypted']} value(s) re-encrypted with the current key",
                    markup=False)
        if d["restarted"]:
            c.print(f"restarted {', '.join(d['restarted'])}", markup=False)
        for w in d["warnings"]:
            out.warn(w)

    out.emit(res, human)


restore_alias = restore_command
app.command("restore")(restore_alias)


@app.command("base")
def base_cmd(
    ctx: typer.Context,
    kind: str = typer.Option("full", "--type", help="full, incr (changes since the last backup) or diff (since the "
                                                    "last full)."),
) -> None:
    """A physical base backup with pgBackRest (backup.pitr): the start of every point-in-time restore; base backups
    and WAL older than backup.pitr_retention_days expire afterwards."""
    from aixsss_ops.usecases import pitr

    st = state(ctx)
    res = pitr.base(st.deployment, kind, say=st.out.info)

    def human(d):
        b = d["backup"] or {}
        st.out.console.print(f"base backup {b.get('label')} ({b.get('type')}) in {d['duration_s']:.1f}s; "
                             f"point-in-time window {d['window']['from']} .. {d['window']['to']}", markup=False)
        for w in d["warnings"]:
            st.out.warn(w)

    st.out.emit(res, human)


@app.command("schedule")
def schedule_cmd(ctx: typer.Context) -> None:
    """Print the systemd service + timer units (backup.pitr_full_calendar, pitr_incr_calendar) and the cron lines
    of the same calendars that run `backup base`."""
    from aixsss_ops.usecases import pitr

    st = state(ctx)
    res = pitr.schedule(st.deployment)

    def human(d):
        c = st.out.console
        for name, text in d["units"].items():
            c.print(f"# /etc/systemd/system/{name}\n{text}", markup=False)
        c.print(f"# enable: systemctl daemon-reload && systemctl enable --now {' '.join(d['timers'])}", markup=False)
        c.print("# or cron:", markup=False)
        for kind, line in d["cron"].items():
            c.print(line or f"# no cron line says OnCalendar={d['calendars'][kind]} ({kind}): use its timer",
                    markup=False)

    st.out.emit(res, human)
