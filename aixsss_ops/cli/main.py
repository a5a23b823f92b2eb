"""The root Typer app. Sub-apps are thin: parse, confirm, call one domain function, render."""

from __future__ import annotations

import typer

from aixsss_ops import __version__
from aixsss_ops.cli.common import state
from aixsss_ops.cli.lazy import Entry, LazyGroup

LazyGroup.entries = {
    "stack": Entry("stack", "app", "Run the embedded stack: postgres, redis, s3 (SeaweedFS), nginx and the app."),
    "config": Entry("config_cmd", "app", "Show the effective configuration (ops.toml + AIXSSS_OPS_* overrides)."),
    "env": Entry("env", "app", "The services' environment: validate it, write fresh env files, compare two."),
    "queue": Entry("queue", "app", "Inspect and control the BullMQ queue: depth, workers, pause/resume, failed jobs."),
    "migrate": Entry("migrate", "app", "Prisma-compatible migrations: the _prisma_migrations ledger, Prisma's advisory "
                                       "lock, blue/green lint."),
    "keys": Entry("keys", "app", "The API_KEY_ENCRYPTION_KEY: generate, check every stored provider key, rotate "
                                 "without losing a secret or a job."),
    "backup": Entry("backup", "app", "Backups: Postgres dumps + S3 object versions as one restore point; list, verify, "
                                     "restore, prune."),
    "restore": Entry("backup", "restore_alias", "Alias of `backup restore`.", group=False),
    "deploy": Entry("deploy", "app", "Blue/green deploy of a release: health gate, atomic proxy switch, warm rollback."),
    "rollback": Entry("deploy", "rollback", "Alias of 'deploy rollback'.", group=False),
    "switch": Entry("deploy", "switch", "Alias of 'deploy switch'.", group=False),
    "play": Entry("play", "play", "Run a playbook: print its plan, run its steps, record the run.", group=False),
    "doctor": Entry("doctor", "doctor", "Diagnose the deployment: env, Postgres, Redis, queue, keys, object store, "
                                        "backups, deploy, host.", group=False),
    "ci": Entry("ci", "app", "Print a CI pipeline that builds, tests, gates on migrations, deploys and rolls back."),
    "images": Entry("images", "app", "Build the docker runtime's images: the Debian base (debootstrap) and the app "
                                     "per release."),
    "compose": Entry("compose", "app", "Docker compose files for users who run the stack with compose."),
    "app": Entry("app_cmd", "app", "The app ops.toml describes: write its description from a monorepo's checkout."),
}

app = typer.Typer(
    name="aixsss-ops",
    cls=LazyGroup,
    help="Run and keep an AIXSSS deployment healthy: stack, migrations, keys, backups, queue, deploys, doctor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aixsss-ops {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    config: str = typer.Option(
        None, "--config", "-c", envvar="AIXSSS_OPS_CONFIG", help="Path of ops.toml (default ./ops.toml)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON document on stdout."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Confirm destructive actions without asking."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail on stderr."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors on stderr."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    st = state(ctx)
    st.config_path = config
    st.yes = yes
    st.out.json_mode = json_out
    st.out.verbose = verbose
    st.out.quiet = quiet


def hoist_json(args: list[str]) -> tuple[list[str], bool]:
    """``--json`` may stand anywhere before ``--`` (``backup list --json``): it becomes the global option."""
    end = args.index("--") if "--" in args else len(args)
    if "--json" not in args[:end]:
        return args, False
    return ["--json", *(a for a in args[:end] if a != "--json"), *args[end:]], True


def run(argv: list[str] | None = None) -> None:
    """The entry point. With ``--json`` every exit prints exactly one JSON document on stdout, usage errors too."""
    import sys

    args, json_mode = hoist_json(list(sys.argv[1:] if argv is None else argv))
    if not json_mode:
        app(args=args, prog_name="aixsss-ops")
        return
    from aixsss_ops.cli.common import CLICK_ERROR
    from aixsss_ops.output import Output

    out = Output(json_mode=True)
    try:
        code = app(args=args, prog_name="aixsss-ops", standalone_mode=False)
    except CLICK_ERROR as e:
        out.emit({"ok": False, "error": e.format_message(), "hint": "see --help", "exit_code": e.exit_code})
        e.show()
        code = e.exit_code
    except typer.Abort:
        out.emit({"ok": False, "error": "aborted", "hint": None, "exit_code": 1})
        out.error("aborted")
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
