"""The root Typer app. Sub-apps are thin: parse, confirm, call one domain function, render."""

from __future__ import annotations

import typer

from aixsss_ops import __version__
from aixsss_ops.cli import backup, ci, config_cmd, deploy, doctor, env, images, keys, migrate, play, queue, stack
from aixsss_ops.cli import compose as compose_cli
from aixsss_ops.cli.common import handle_errors, state

app = typer.Typer(
    name="aixsss-ops",
    help="Run and keep an AIXSSS deployment healthy: stack, migrations, keys, backups, queue, deploys, doctor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(config_cmd.app, name="config")
app.add_typer(env.app, name="env")
app.add_typer(queue.app, name="queue")
app.add_typer(migrate.app, name="migrate")
app.add_typer(keys.app, name="keys")
app.add_typer(backup.app, name="backup")
app.command("restore", help="Alias of `backup restore`.")(handle_errors(backup.restore_command))
app.add_typer(deploy.app, name="deploy")
app.command("rollback", help="Alias of 'deploy rollback'.")(deploy.rollback)
app.command("switch", help="Alias of 'deploy switch'.")(deploy.switch)
app.command("play", help=play.HELP)(play.play)
app.add_typer(ci.app, name="ci")
app.add_typer(images.app, name="images")
app.add_typer(compose_cli.app, name="compose")
app.command("doctor")(doctor.doctor)


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


def run() -> None:
    app()
