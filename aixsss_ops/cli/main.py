"""The root Typer app. Sub-apps are thin: parse, confirm, call one domain function, render."""

from __future__ import annotations

import typer
from typer.core import TyperOption

from aixsss_ops import __version__
from aixsss_ops.cli.lazy import Entry, LazyGroup

_display_type_rich = TyperOption.display_type_rich


def _flag_shows_no_type(self, ctx):
    """Typer's rich help prints a type after every option, ``<bool>`` after a flag that takes no value (its plain
    help leaves it out); a flag (``--json``, ``--yes``, ``--help``, ``--x/--no-x``) shows none there."""
    if self.is_flag and not self.count:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_type


def _plain_values_skip_pydantic() -> None:
    """typer (0.29) converts each parameter's value with a pydantic TypeAdapter that it builds on first use, and
    building the first one imports pydantic: about as long as typer's own import, paid by every command that has
    an option. For a value that already is what the parameter's type asks (None, a str for ``str``, strs for
    ``list[str]``, a number in range for ``int``/``float``, as a default or a string option gives them) that
    conversion returns it unchanged, so it is returned as is; any other value goes through typer's own
    conversion, errors and all. A typer without this layout is left alone."""
    from typer import _coercion, core

    base, param_cls = getattr(_coercion, "RuntimeParam", None), getattr(core, "_TyperParameter", None)
    if base is None or param_cls is None or not hasattr(param_cls, "get_runtime_param"):
        return
    plain_first: list[type] = []  # the RuntimeParam class below, made on first use

    def get_runtime_param(self):
        if self._runtime_param is None:
            if not plain_first:
                plain_first.append(_plain_first_class(_coercion, base))
            d = self.type_descriptor
            self._runtime_param = plain_first[0](parameter_info=d.parameter_info, annotation=d.annotation, descriptor=d)
        return self._runtime_param

    param_cls.get_runtime_param = get_runtime_param


def _unchanged(desc, param, value) -> tuple[bool, object]:
    """(True, the converted value) when typer's conversion of ``value`` would give it back as it is."""
    from typing import get_args, get_origin

    ann, info = desc.annotation, desc.parameter_info
    if desc.file_annotation is not None or getattr(info, "parser", None) is not None:
        return False, None
    if param.multiple or param.nargs == -1:
        ok = (get_origin(ann) is list and get_args(ann) == (str,) and isinstance(value, list | tuple)
              and all(type(v) is str for v in value))
        return ok, list(value) if ok else None  # typer's list conversion returns a list
    if ann is str:
        return type(value) is str, value
    if ann in (int, float) and type(value) is ann and not getattr(info, "clamp", False):
        low, high = getattr(info, "min", None), getattr(info, "max", None)
        return (low is None or value >= low) and (high is None or value <= high), value
    return False, None


def _plain_first_class(coercion, base) -> type:
    from dataclasses import dataclass
    from typing import Any

    @dataclass(frozen=True)
    class PlainFirst(base):
        descriptor: Any = None

        def _coerce_value(self, value, param, ctx):
            ok, same = _unchanged(self.descriptor, param, value)
            if ok:
                return same
            full = coercion.build_runtime_param(self.descriptor)
            param._runtime_param = full
            return full._coerce_value(value, param=param, ctx=ctx)

    return PlainFirst


_plain_values_skip_pydantic()

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
                                     "per release; push one into the swarm's registry."),
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
    from aixsss_ops.cli.common import state

    st = state(ctx)
    st.config_path = config
    st.yes = yes
    st.json_mode, st.verbose, st.quiet = json_out, verbose, quiet


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
