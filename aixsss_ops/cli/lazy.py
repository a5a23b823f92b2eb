"""A root command group that imports a sub-app only when it is run.

``aixsss-ops --help`` lists every command from the table below without importing or building any of
them, and ``aixsss-ops config show`` builds only ``config``: start-up stays near Typer's own floor however
many commands the CLI grows. A test checks that each listed help text matches the real command's.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import typer
from typer.core import TyperGroup


@dataclass(frozen=True)
class Entry:
    module: str  # under aixsss_ops.cli
    attr: str  # a Typer app (a group) or a command function
    help: str
    group: bool = True


class LazyGroup(TyperGroup):
    entries: dict[str, Entry] = {}

    def list_commands(self, ctx) -> list[str]:
        return [*self.commands, *(n for n in self.entries if n not in self.commands)]

    def get_command(self, ctx, cmd_name: str):
        if cmd_name in self.commands or cmd_name not in self.entries:
            return self.commands.get(cmd_name)
        e = self.entries[cmd_name]
        return typer.core.TyperCommand(cmd_name, help=e.help, short_help=e.help)  # a listing stand-in

    def invoke(self, ctx):
        from aixsss_ops.cli.common import errors_mapped, state

        with errors_mapped(state(ctx)):
            return super().invoke(ctx)

    def resolve_command(self, ctx, args):
        if args and args[0] in self.entries:
            self.load(args[0])
        return super().resolve_command(ctx, args)

    def load(self, name: str):
        if name not in self.commands:
            e = self.entries[name]
            obj = getattr(importlib.import_module(f"aixsss_ops.cli.{e.module}"), e.attr)
            if e.group:
                cmd = typer.main.get_group(obj)
            else:
                single = typer.Typer(add_completion=False)
                single.command(name, help=e.help)(obj)
                cmd = typer.main.get_command(single)
            cmd.name = name
            self.commands[name] = cmd
        return self.commands[name]

    def load_all(self) -> None:
        for name in self.entries:
            self.load(name)
