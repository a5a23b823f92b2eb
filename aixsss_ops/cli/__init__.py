"""The Typer sub-apps (one per noun) and the root command group."""

from typer.core import TyperOption

_display_type_rich = TyperOption.display_type_rich


def _flag_shows_no_type(self, ctx):
    """Typer's rich help prints a type after every option, ``<bool>`` after a flag that takes no value (its plain
    help leaves it out); a flag (``--json``, ``--yes``, ``--help``, ``--x/--no-x``) shows none there."""
    if self.is_flag and not self.count:
        return None
    return _display_type_rich(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_type
