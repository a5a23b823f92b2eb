"""`aixsss-ops env`: validate the services' environment, write fresh env files, compare two. Thin."""

from __future__ import annotations

from pathlib import Path

import typer

from aixsss_ops.cli.common import State, state
from aixsss_ops.errors import UsageError

app = typer.Typer(help="The services' environment: validate it, write fresh env files, compare two.", no_args_is_help=True)

JsonFlag = typer.Option(False, "--json", help="Print exactly one JSON document on stdout.")
SERVICE_CHOICES = ("api", "worker", "web", "all")


def _scrub(envs) -> None:
    from aixsss_ops.output import scrubber, secret_values

    scrubber.add(*secret_values(envs))


def _finding_lines(st: State, findings) -> None:
    for f in findings:
        where = " ".join(x for x in (f.service, f.variable) if x)
        st.out.console.print(f"{f.status}: {where}: [{f.check}] {f.message}", markup=False)
        if f.fix:
            st.out.console.print(f"    fix: {f.fix}", markup=False)


@app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    service: str = typer.Option("all", "--service", help="api, worker, web or all."),
    env_file: list[str] = typer.Option(
        None, "--env-file", help="An env file to read: SERVICE=PATH, or PATH with one --service (repeatable). "
        "Default: the stack's <state_dir>/env/<service>.env."),
    environ: bool = typer.Option(False, "--environ", help="Lay the process environment over the files (as the "
                                 "services do); the files may then be absent."),
    strict: bool = typer.Option(False, "--strict", help="Exit 3 on warnings too."),
    json_out: bool = JsonFlag,
) -> None:
    """Check the env of each service: the contract, api/worker agreement, production rules. Exit 3 on errors."""
    from aixsss_ops.envcheck import sources
    from aixsss_ops.usecases.env import validate_env

    st = state(ctx)
    st.out.json_mode = st.out.json_mode or json_out
    if service not in SERVICE_CHOICES:
        raise UsageError(f"--service must be one of {', '.join(SERVICE_CHOICES)}")
    services = ["api", "worker", "web"] if service == "all" else [service]
    given = sources.parse_env_file_args(env_file or [], service)
    unknown = sorted(set(given) - set(services))
    if unknown:
        raise UsageError(f"--env-file for {', '.join(unknown)} but --service is {service}")
    report = validate_env(st.deployment, services, given, with_environ=environ)
    data = report.to_dict(strict)
    ok = data["ok"]

    def human(_d):
        _finding_lines(st, report.findings)
        checked = ", ".join(f"{s} ({report.origins[s]})" for s in services if s in report.origins) or "nothing"
        st.out.console.print(f"{data['errors']} error(s), {data['warnings']} warning(s); checked {checked}",
                             markup=False)

    st.out.emit(data, human)
    if not ok:
        raise typer.Exit(3)


@app.command("init")
def init_cmd(
    ctx: typer.Context,
    production: bool = typer.Option(False, "--production", help="NODE_ENV=production; must pass the production rules."),
    force: bool = typer.Option(False, "--force", help="Replace existing files (API_KEY_ENCRYPTION_KEY is kept)."),
    directory: Path = typer.Option(None, "--dir", help="Where to write (default: <state_dir>/env).", show_default=False),
    cors_origin: str = typer.Option(None, "--cors-origin", help="CORS_ORIGIN of the api (default: app.cors_origin, "
                                    "else the stack's proxy URL)."),
    json_out: bool = JsonFlag,
) -> None:
    """Write api.env, worker.env and web.env with strong random secrets (0600, atomic), consistent across services."""
    from aixsss_ops.envcheck.init import init_env

    st = state(ctx)
    st.out.json_mode = st.out.json_mode or json_out
    res = init_env(st.config, production=production, force=force, directory=directory, cors_origin=cors_origin)

    def human(_d):
        for svc, path in res.files.items():
            st.out.console.print(f"wrote {path} ({svc})", markup=False)
        st.out.console.print(f"API_KEY_ENCRYPTION_KEY fingerprint {res.key_fingerprint}"
                             + (" (kept)" if res.kept else " (new)"), markup=False)
        _finding_lines(st, res.findings)

    st.out.emit(res.to_dict(), human)


@app.command("diff")
def diff_cmd(
    ctx: typer.Context,
    a: str = typer.Argument(..., help="An env file, or a service of the stack (api, worker, web)."),
    b: str = typer.Argument(..., help="An env file, or a service of the stack (api, worker, web)."),
    json_out: bool = JsonFlag,
) -> None:
    """Which variables differ between two env files or services; secrets shown as lengths and fingerprints."""
    from aixsss_ops import envfile
    from aixsss_ops.envcheck.diff import diff

    st = state(ctx)
    st.out.json_mode = st.out.json_mode or json_out

    def resolve(x: str) -> Path:
        return st.deployment.layout.env_file(x) if x in ("api", "worker", "web") else Path(x)

    pa, pb = resolve(a), resolve(b)
    ea, eb = envfile.read(pa), envfile.read(pb)
    _scrub({"a": ea, "b": eb})
    rows = diff(ea, eb)

    def human(_d):
        if not rows:
            st.out.console.print(f"{pa} and {pb} define the same variables with the same values", markup=False)
            return
        st.out.table(f"A = {pa}, B = {pb}", ["variable", "change", "A", "B", "note"],
                     [[r["variable"], r["change"], r["a"], r["b"], r["note"]] for r in rows])

    st.out.emit({"a": str(pa), "b": str(pb), "same": not rows, "differences": rows}, human)
