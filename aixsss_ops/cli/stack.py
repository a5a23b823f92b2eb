"""`aixsss-ops stack`: the embedded local stack."""

from __future__ import annotations

import typer

from aixsss_ops.cli.common import state

app = typer.Typer(help="Run the embedded stack: postgres, redis, s3 (SeaweedFS), nginx and the app.", no_args_is_help=True)


def _stack(ctx: typer.Context):
    from aixsss_ops.stack.engines import open_stack

    return open_stack(state(ctx).deployment)


def _ports(ports: dict[str, int]) -> str:
    values = list(ports.values())
    return "" if not values else str(values[0]) + (f" (+{len(values) - 1})" if len(values) > 1 else "")


def _render(st, report) -> None:
    def fmt_uptime(s):
        if s is None:
            return ""
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

    rows = [
        (s.unit, s.state, "yes" if s.healthy else "no", _ports(s.ports), s.pid or "", fmt_uptime(s.uptime_s), s.detail)
        for s in report.services
    ]
    if rows:
        st.out.table(
            f"stack ({report.state_dir})", ["service", "state", "healthy", "ports", "pid", "uptime", "detail"], rows
        )
    if report.nodes:
        st.out.table("nodes", ["node", "role", "state", "availability", "address", "tasks", "services"], [
            (n["hostname"] + (" (leader)" if n["leader"] else ""), n["role"], n["state"], n["availability"],
             n["address"], n["tasks"], ", ".join(n["services"])) for n in report.nodes])
    if report.services and report.healthy:
        st.out.console.print(f"AIXSSS is up: {report.url}  (active color: {report.active_color})")


@app.command("up")
def up(ctx: typer.Context) -> None:
    """Start (or repair) every service; idempotent. Data survives down/up."""
    st = state(ctx)
    from aixsss_ops.usecases.stack import up

    report = up(st.deployment, st.out.info)
    st.out.emit(report.to_dict(), lambda _d: _render(st, report))
    if not report.healthy:
        raise typer.Exit(1)


@app.command("down")
def down(ctx: typer.Context) -> None:
    """Stop every service cleanly (the app first, Postgres last). Data is kept."""
    st = state(ctx)
    report = _stack(ctx).down(progress=st.out.info)
    st.out.emit(report.to_dict(), lambda _d: st.out.info("; ".join(report.actions)))


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Per-service state and health. Exit 3 when anything is down or unhealthy."""
    st = state(ctx)
    report = _stack(ctx).status()
    st.out.emit(report.to_dict(), lambda _d: _render(st, report) if report.services else st.out.info("stack is down"))
    if not report.healthy:
        raise typer.Exit(3)


@app.command("logs")
def logs(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="postgres, redis, s3, proxy, api-blue, worker-blue, ..."),
    lines: int = typer.Option(100, "--lines", "-n", min=1, help="How many lines from the end."),
) -> None:
    """The last lines of a service's log."""
    st = state(ctx)
    text = _stack(ctx).logs(service, lines)
    st.out.emit({"service": service, "lines": text.splitlines()}, lambda _d: print(text))


@app.command("smoke")
def smoke(ctx: typer.Context, timeout: float = typer.Option(60.0, help="Seconds to wait for the job.")) -> None:
    """End-to-end check through the proxy: health, the web page, ready, a profile, a job processed by the worker, its
    artifact, every worker of the live color ready. What the app does not offer is skipped and said."""
    from aixsss_ops.usecases.stack import smoke as run_smoke

    st = state(ctx)
    res = run_smoke(st.deployment, timeout)

    def human(_d):
        for s in res.steps:
            st.out.console.print(f"ok  {s}", markup=False)
        for n in res.notes:
            st.out.console.print(f"--  {n}", markup=False)

    st.out.emit(res.__dict__, human)
