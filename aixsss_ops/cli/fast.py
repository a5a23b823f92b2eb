"""The commands an operator runs under pressure, without the command-line parser: ``rollback`` and ``switch
[blue|green]`` (also as ``deploy rollback``/``deploy switch``) with only the global options (``--config``/``-c``,
``--json``, ``--yes``, ``--verbose``, ``--quiet``). Typer's import is about half of the CLI's start-up, and the
previous release should serve as soon as possible after ``rollback`` starts; these command lines mean exactly what
the Typer commands do (the same use case, renderer and error mapping) and any other command line, ``--help``
included, goes to the Typer app."""

from __future__ import annotations

import os

from aixsss_ops.cli.session import State, report_error, sigterm_interrupts

FLAGS = {"--json": "json_mode", "--yes": "yes", "-y": "yes", "--verbose": "verbose", "-v": "verbose",
         "--quiet": "quiet", "-q": "quiet"}
COMMANDS = {("rollback",): "rollback", ("deploy", "rollback"): "rollback", ("switch",): "switch",
            ("deploy", "switch"): "switch"}
COLORS = ("blue", "green")


def parse(args: list[str]) -> tuple[State, str, str | None] | None:
    """(the run's State, "rollback" or "switch", the color asked) when ``args`` is a command line of the fast path;
    None for any other."""
    st = State(config_path=os.environ.get("AIXSSS_OPS_CONFIG") or None)
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a in FLAGS and (a == "--json" or not rest):  # --json may stand anywhere; the others before the command
            setattr(st, FLAGS[a], True)
        elif a in ("--config", "-c") and not rest:
            value = next(it, None)
            if not value:
                return None
            st.config_path = value
        elif a.startswith("--config=") and not rest and len(a) > len("--config="):
            st.config_path = a.partition("=")[2]
        elif a.startswith("-"):
            return None
        else:
            rest.append(a)
    for words, action in COMMANDS.items():
        if tuple(rest[: len(words)]) == words:
            extra = rest[len(words):]
            if action == "rollback" and not extra:
                return st, action, None
            if action == "switch" and (not extra or (len(extra) == 1 and extra[0] in COLORS)):
                return st, action, extra[0] if extra else None
    return None


def run(args: list[str]) -> int | None:
    """Run ``args`` when it is a command line of the fast path and return its exit code; None otherwise."""
    parsed = parse(args)
    if parsed is None:
        return None
    st, action, color = parsed
    try:
        with sigterm_interrupts():  # SIGTERM stops it as Ctrl-C does
            from aixsss_ops.cli.deploy_render import show_deploy_result
            from aixsss_ops.usecases.deploy import deployer

            d = deployer(st.deployment, st.out.info)
            show_deploy_result(st, d.rollback(None, restore_db=None) if action == "rollback" else d.switch(color))
            return 0
    except (Exception, KeyboardInterrupt) as e:
        return report_error(st, e)
