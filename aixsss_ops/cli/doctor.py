"""`aixsss-ops doctor`: every check in parallel, a table of findings with fixes. Thin."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import state

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skipped": "dim"}


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
    from aixsss_ops.output import scrubber
    from aixsss_ops.usecases.doctor import run_doctor

    st = state(ctx)
    st.out.json_mode = st.out.json_mode or json_out
    report = run_doctor(st.deployment, only, skip, timeout, migrations_dir)

    def human(_d):
        # one finding per line (status, check, message), its fix indented below: readable at any terminal width
        # and greppable, where a four-column table squeezed every message into a narrow column at 80 columns
        from rich.text import Text

        c = st.out.console
        c.print(f"aixsss-ops doctor ({report.seconds:.2f}s)", markup=False)
        width = max((len(f.status) for f in report.findings), default=0)
        for f in report.findings:
            where = f.check + (f" ({f.variable})" if f.variable else "")
            line = Text(f.status.ljust(width), style=STYLE[f.status])
            line.append(f"  {where}: {scrubber.scrub(f.message)}")
            c.print(line)
            if f.fix:
                c.print(Text(" " * (width + 2) + f"fix: {scrubber.scrub(f.fix)}"))
        n = report.counts
        st.out.console.print(f"{n['ok']} ok, {n['warn']} warning(s), {n['fail']} failure(s), {n['skipped']} skipped",
                             markup=False)

    st.out.emit(report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(3)
