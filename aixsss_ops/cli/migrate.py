"""`aixsss-ops migrate`: Prisma-compatible migrations (status, deploy, resolve, baseline, create, lint)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from aixsss_ops.cli.common import State, confirm, state

app = typer.Typer(
    help="Prisma-compatible migrations: the _prisma_migrations ledger, Prisma's advisory lock, blue/green lint.",
    no_args_is_help=True,
)

DIR_HELP = "Prisma migrations folder (default: the bundled app/migrations; e.g. apps/api/prisma/migrations)."
URL_HELP = "PostgreSQL URL (else $DATABASE_URL, else DATABASE_URL in <state_dir>/env/api.env); ?schema= is honoured."
MigrationsDir = typer.Option(None, "--migrations-dir", help=DIR_HELP, show_default=False)
DatabaseUrl = typer.Option(None, "--database-url", help=URL_HELP, show_default=False)
LockTimeout = typer.Option(60.0, "--lock-timeout", min=0.0, help="Seconds to wait for the migration lock.")


def _dir(st: State, value: Path | None) -> Path:
    from aixsss_ops.usecases.migrate import migrations_dir

    return migrations_dir(st.deployment, value)


def _url(st: State, value: str | None) -> str:
    from aixsss_ops.usecases.migrate import database_url

    return database_url(st.deployment.with_flags(DATABASE_URL=value))


def _findings_table(st: State, findings) -> None:
    """One line per finding, compiler style (greppable, readable at any terminal width)."""
    for f in findings:
        st.out.console.print(f"{f.migration}/migration.sql:{f.line}: {f.severity}: [{f.rule}] {f.message}", markup=False)
        st.out.console.print(f"    {f.statement}", markup=False)


@app.command()
def status(
    ctx: typer.Context,
    migrations_dir: Path = MigrationsDir,
    database_url: str = DatabaseUrl,
) -> None:
    """Applied, pending, failed and modified migrations. Exit 3 when anything is pending, failed or drifted."""
    from aixsss_ops.migrate import status as run

    st = state(ctx)
    report = run(_url(st, database_url), _dir(st, migrations_dir))

    def human(_):
        out = st.out
        if report.entries:
            out.table(None, ["migration", "state", "finished at", "note"], [
                (e.name, e.state, e.finished_at or "", _note(e)) for e in report.entries
            ])
        if report.needs_baseline:
            out.warn(f"the database has tables ({', '.join(report.unmanaged_tables[:5])}) but no _prisma_migrations: "
                     f"run `aixsss-ops migrate baseline` to take it over")
        if report.lock_holder:
            out.info(f"the migration lock is held by {report.lock_holder}")
        c = report.counts
        summary = ", ".join(f"{n} {s}" for s, n in c.items() if n) or "no migrations"
        out.console.print(f"{report.database}: {summary}" + ("" if report.ok else " — not up to date"), markup=False)

    st.out.emit(report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(3)


def _note(e) -> str:
    if e.state == "modified":
        return f"file changed since applied (recorded {e.recorded_checksum[:12]}…, now {e.checksum[:12]}…)"
    if e.state == "failed":
        lines = [ln for ln in (e.logs or "").splitlines() if ln.startswith("ERROR:")]
        return (lines[0] if lines else "unfinished; no error recorded (killed?)") + " — needs `migrate resolve`"
    if e.state == "interrupted":
        return "interrupted and rolled back; the next deploy applies it again"
    if e.state == "running":
        return "being applied by another session"
    if e.state == "missing":
        return "applied in the database, not in the folder"
    return ""


@app.command()
def deploy(
    ctx: typer.Context,
    migrations_dir: Path = MigrationsDir,
    database_url: str = DatabaseUrl,
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and its lint findings; change nothing."),
    allow_drift: bool = typer.Option(False, "--allow-drift", help="Deploy even if an applied migration's file changed."),
    allow_destructive: bool = typer.Option(
        False, "--allow-destructive", help="Apply pending migrations with destructive or color-breaking statements."
    ),
    lock_timeout: float = LockTimeout,
    backup: bool = typer.Option(
        False, "--backup", help="Take a backup first (always done when --allow-destructive lets findings through): "
        "the database alone when no object store answers; none for a database no migration was ever applied to."
    ),
) -> None:
    """Apply pending migrations in order, each in its own transaction, under Prisma's advisory lock."""
    from aixsss_ops.migrate import deploy as run
    from aixsss_ops.usecases.migrate import deploy_with_backup

    st = state(ctx)
    dep = st.deployment.with_flags(DATABASE_URL=database_url)
    mdir = _dir(st, migrations_dir)
    if dry_run:
        result = run(dep.database.value, mdir, allow_drift=allow_drift, allow_destructive=allow_destructive,
                     lock_timeout=lock_timeout, dry_run=True, progress=st.out.info)
    else:
        result = deploy_with_backup(dep, mdir, backup_first=backup, allow_drift=allow_drift,
                                    allow_destructive=allow_destructive, lock_timeout=lock_timeout,
                                    progress=st.out.info)

    def human(_):
        out = st.out
        for w in result.warnings:
            out.warn(w)
        if result.findings:
            _findings_table(st, result.findings)
        if dry_run:
            if result.plan:
                out.console.print("plan: apply " + ", ".join(result.plan), markup=False)
            else:
                out.console.print("plan: nothing to apply, the database is up to date", markup=False)
            for b in result.blockers:
                out.error(b)
            return
        if result.backup_id:
            out.console.print(f"pre-migration backup: {result.backup_id}", markup=False)
        if result.applied:
            out.console.print(f"applied {len(result.applied)} migration(s) in {result.duration_s:.2f}s: "
                              + ", ".join(result.applied), markup=False)
        else:
            out.console.print("nothing to apply, the database is up to date", markup=False)

    st.out.emit(result.to_dict(), human)
    if result.blockers:
        raise typer.Exit(3)


@app.command()
def resolve(
    ctx: typer.Context,
    applied: str = typer.Option(None, "--applied", metavar="NAME", help="Record NAME as applied (you completed it)."),
    rolled_back: str = typer.Option(
        None, "--rolled-back", metavar="NAME", help="Record the failed run of NAME as rolled back (deploy retries it)."
    ),
    migrations_dir: Path = MigrationsDir,
    database_url: str = DatabaseUrl,
    lock_timeout: float = LockTimeout,
) -> None:
    """Recover from a failed migration, as `prisma migrate resolve` does (ledger rows are never deleted)."""
    from aixsss_ops.errors import UsageError
    from aixsss_ops.migrate import resolve_applied, resolve_rolled_back

    st = state(ctx)
    if bool(applied) == bool(rolled_back):
        raise UsageError("pass exactly one of --applied NAME or --rolled-back NAME")
    url = _url(st, database_url)
    if applied:
        result = resolve_applied(url, _dir(st, migrations_dir), applied, lock_timeout=lock_timeout)
        text = f"{applied} recorded as applied"
    else:
        result = resolve_rolled_back(url, rolled_back, lock_timeout=lock_timeout)
        text = f"{rolled_back} recorded as rolled back; the next deploy applies it again"
    st.out.emit(result.to_dict(), lambda _: st.out.console.print(text, markup=False))


@app.command()
def baseline(
    ctx: typer.Context,
    up_to: str = typer.Option(None, "--up-to", metavar="NAME", help="Last migration the database already contains."),
    migrations_dir: Path = MigrationsDir,
    database_url: str = DatabaseUrl,
    lock_timeout: float = LockTimeout,
) -> None:
    """Mark an existing, unmanaged database as being at a migration, without running any SQL."""
    from aixsss_ops.migrate import baseline as run

    st = state(ctx)
    url = _url(st, database_url)
    mdir = _dir(st, migrations_dir)
    confirm(st, f"Record the migrations of {mdir}{' through ' + up_to if up_to else ''} as applied without running them?")
    result = run(url, mdir, up_to, lock_timeout=lock_timeout)
    st.out.emit(result.to_dict(), lambda _: st.out.console.print(
        f"baselined {len(result.migrations)} migration(s), through {result.migrations[-1]}", markup=False))


@app.command()
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="What the migration does, e.g. add_scene_notes."),
    migrations_dir: Path = MigrationsDir,
) -> None:
    """Create a new timestamped migration folder with an empty migration.sql (development only)."""
    from aixsss_ops.migrate.create import create_migration

    st = state(ctx)
    node_env = os.environ.get("NODE_ENV")
    if node_env is None and migrations_dir is None:
        node_env = st.config.app.node_env
    path = create_migration(_dir(st, migrations_dir), name, node_env=node_env)
    st.out.emit({"created": str(path), "migration": path.parent.name},
                lambda _: st.out.console.print(f"created {path}", markup=False))


@app.command()
def lint(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Migrations to lint (default: all in the folder)."),
    migrations_dir: Path = MigrationsDir,
    database_url: str = typer.Option(
        None, "--database-url", help="Read table sizes from this database (for the CREATE INDEX rule).", show_default=False
    ),
) -> None:
    """Flag statements that break the running color during blue/green or lose data. Exit 3 on errors."""
    from aixsss_ops.errors import CheckFailed, UsageError
    from aixsss_ops.migrate.layout import read_layout
    from aixsss_ops.migrate.lint import blocking
    from aixsss_ops.migrate.lint import lint as run

    st = state(ctx)
    layout = read_layout(_dir(st, migrations_dir))
    chosen = layout.migrations
    if names:
        unknown = [n for n in names if layout.get(n) is None]
        if unknown:
            raise UsageError(f"not in {layout.directory}: {', '.join(unknown)}")
        chosen = [layout.get(n) for n in names]
    sizes = None
    if database_url:
        from aixsss_ops.migrate.session import connect, table_rows

        with connect(_url(st, database_url)) as conn:
            sizes = table_rows(conn)
    findings = run(chosen, sizes)
    errors = blocking(findings)

    def human(_):
        if findings:
            _findings_table(st, findings)
        st.out.console.print(f"{len(chosen)} migration(s) linted: {len(errors)} error(s), "
                             f"{len(findings) - len(errors)} warning(s)", markup=False)

    st.out.emit({"ok": not errors, "migrations": [m.name for m in chosen], "findings": [f.to_dict() for f in findings]},
                human)
    if errors:
        raise typer.Exit(CheckFailed.exit_code)
