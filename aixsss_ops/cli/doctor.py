"""`aixsss-ops doctor`: every check in parallel, a table of findings with fixes. Thin."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from aixsss_ops.cli.common import handle_errors, state

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim"}


@handle_errors
def doctor(
    ctx: typer.Context,
    only: list[str] = typer.Option(None, "--only", help="Run only these checks or groups (repeatable), e.g. redis."),
    skip: list[str] = typer.Option(None, "--skip", help="Leave out these checks or groups (repeatable)."),
    timeout: float = typer.Option(3.0, "--timeout", min=0.1, help="Seconds each check may take."),
    migrations_dir: Path = typer.Option(None, "--migrations-dir", show_default=False,
                                        help="Prisma migrations folder (default: the live release's)."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON document on stdout."),
) -> None:
    """Diagnose the deployment: env, Postgres, Redis, queue, keys, object store, backups, deploy, host.

    Exit 3 when any check fails (warnings alone exit 0)."""
    from aixsss_ops.doctor import runner
    from aixsss_ops.doctor.context import Context
    from aixsss_ops.doctor.registry import select
    from aixsss_ops.output import scrubber

    st = state(ctx)
    st.out.json_mode = st.out.json_mode or json_out
    checks = select(only, skip)
    c = Context(st.config, timeout=timeout, migrations_dir=migrations_dir)
    with contextlib.suppress(Exception):  # an unreadable env file: the env check reports it
        scrubber.add(*c.secrets())
    report = runner.run(checks, c)

    def human(_d):
        from rich.table import Table
        from rich.text import Text

        t = Table(title=f"aixsss-ops doctor ({report.seconds:.2f}s)", show_lines=False)
        for col in ("check", "status", "finding", "fix"):
            t.add_column(col, overflow="fold")
        for f in report.findings:
            t.add_row(f.check + (f" ({f.variable})" if f.variable else ""),
                      Text(f.status, style=STYLE[f.status]),
                      scrubber.scrub(f.message), scrubber.scrub(f.fix or ""))
        st.out.console.print(t)
        n = report.counts
        st.out.console.print(f"{n['ok']} ok, {n['warn']} warning(s), {n['fail']} failure(s), {n['skipped']} skipped",
                             markup=False)

    st.out.emit(report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(3)
