"""`aixsss-ops deploy`: blue/green deploys, switch, rollback, status, release history, the lock."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import state
from aixsss_ops.cli.deploy_render import show_deploy_result

app = typer.Typer(
    help="Blue/green deploy of a release: health gate, atomic proxy switch, warm rollback.",
    invoke_without_command=True,
)
lock_app = typer.Typer(help="The deploy lock.", no_args_is_help=True)
app.add_typer(lock_app, name="lock")


def _deployer(ctx: typer.Context):
    from aixsss_ops.usecases.deploy import deployer

    st = state(ctx)
    return deployer(st.deployment, st.out.info)


@app.callback()
def deploy(
    ctx: typer.Context,
    version: str = typer.Option(None, "--version", help="Release version (default: app.version in ops.toml)."),
    source: Path = typer.Option(None, "--source", help="App source folder (default: app.source in ops.toml)."),
    allow_destructive: bool = typer.Option(False, "--allow-destructive", help="Apply migrations lint flags."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and change nothing."),
    force: bool = typer.Option(False, "--force", help="Redeploy even when this release is already live."),
) -> None:
    """Build a release and deploy it to the idle color; switch the proxy once it is healthy."""
    if ctx.invoked_subcommand:
        return
    st = state(ctx)
    res = _deployer(ctx).deploy(
        version=version, source=source, allow_destructive=allow_destructive, dry_run=dry_run, force=force
    )
    show_deploy_result(st, res)


@app.command("switch")
def switch(ctx: typer.Context, color: str = typer.Argument(None, help="blue or green (default: the other one).")) -> None:
    """Switch the proxy to a color by hand, through the same health gate."""
    if color not in (None, "blue", "green"):
        from aixsss_ops.errors import UsageError

        raise UsageError(f"color must be blue or green, not {color!r}")
    show_deploy_result(state(ctx), _deployer(ctx).switch(color))


@app.command("rollback")
def rollback(
    ctx: typer.Context,
    to: str = typer.Option(None, "--to", help="Release id to go back to (default: the previous one)."),
    restore_db: str = typer.Option(
        None, "--restore-db", metavar="BACKUP", help="Then restore this backup's database (e.g. the pre-deploy one)."
    ),
) -> None:
    """Go back to the previous release: a proxy switch when its color is still warm, else a boot and a switch."""
    st = state(ctx)
    if restore_db:
        from aixsss_ops.cli.common import confirm

        confirm(st, f"roll back and replace the live database with backup {restore_db}?")
    show_deploy_result(st, _deployer(ctx).rollback(to, restore_db=restore_db))


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Active color, release and health per color, proxy target, lock."""
    st = state(ctx)
    data = _deployer(ctx).status()

    def human(d):
        rows = []
        for color, spec in d["colors"].items():
            api = spec["services"]["api"]
            def where(s: dict) -> str:
                return f" ({s['replicas']})" if s.get("replicas") else ""

            others = ", ".join(f"{name} {s['state']}{where(s)}" for name, s in spec["services"].items()
                               if name != "api")
            rows.append(
                (
                    color + (" (live)" if color == d["active"] else ""),
                    spec.get("release"),
                    spec.get("status", ""),
                    f"{api['state']}{' healthy' if api.get('healthy') else ''}{where(api)}",
                    others,
                    spec.get("warm_until", "") if color != d["active"] else "",
                )
            )
        st.out.table("deploy", ["color", "release", "status", "api", "other processes", "warm until"], rows)
        st.out.console.print(f"proxy {d['proxy_url']} -> {d['proxy_target']}")
        if not d["consistent"]:
            st.out.warn(f"colors.json says {d['intended_active']} but the proxy serves {d['proxy_target']}")
        lock = d["lock"]
        from aixsss_ops.deploy.lock import describe

        st.out.console.print("lock: " + ("held by " + describe(lock["holder"]) if lock["held"] else "not held"),
                             markup=False)

    st.out.emit(data, human)


@app.command("releases")
def releases_cmd(ctx: typer.Context, limit: int = typer.Option(20, "--limit", "-n", min=1)) -> None:
    """Release history: who, when, version, colors, migrations, backup, duration, outcome."""
    st = state(ctx)
    hist = _deployer(ctx).stack.deploy_state.history()[-limit:]
    rows = [
        (
            h["at"],
            h["action"],
            h["release"],
            f"{h.get('previous_color')} -> {h.get('color')}",
            h["outcome"],
            ", ".join(h.get("migrations_applied") or []),
            h.get("backup_id") or "",
            h.get("seconds"),
        )
        for h in hist
    ]
    st.out.emit(
        hist,
        lambda _d: st.out.table(
            "releases", ["at", "action", "release", "colors", "outcome", "migrations", "backup", "seconds"], rows
        ),
    )


@lock_app.command("status")
def lock_status(ctx: typer.Context) -> None:
    """Who holds the deploy lock."""
    st = state(ctx)
    info = _deployer(ctx).lock.info()
    data = {"held": info.held, "holder": info.holder, "stale_note": info.stale_note}

    def human(_d):
        from aixsss_ops.deploy.lock import status_lines

        for line in status_lines(info):
            st.out.console.print(line, markup=False)

    st.out.emit(data, human)


@lock_app.command("release")
def lock_release(ctx: typer.Context) -> None:
    """Clear the note a killed deploy left; refuses while a live deploy holds the lock."""
    st = state(ctx)
    cleared = _deployer(ctx).lock.clear_stale()
    st.out.emit({"cleared": cleared}, lambda d: st.out.console.print("cleared a stale note" if cleared else "lock is free"))
