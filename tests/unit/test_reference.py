from pathlib import Path

from aixsss_ops.cli.reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def test_command_reference_is_in_sync_with_the_code():
    assert DOC.read_text() == render(), "docs/commands.md is stale: run scripts/gen-docs"


def test_reference_lists_every_command_with_its_options():
    text = render()
    for cmd in ("aixsss-ops stack up", "aixsss-ops stack down", "aixsss-ops stack status", "aixsss-ops stack logs",
                "aixsss-ops config show"):
        assert f"## `{cmd}`" in text
    assert "`--lines, -n`" in text


def test_the_lazy_root_lists_every_command_with_its_real_help():
    import typer

    from aixsss_ops.cli.lazy import LazyGroup
    from aixsss_ops.cli.main import app

    root = typer.main.get_command(app)
    assert isinstance(root, LazyGroup)
    for name, entry in LazyGroup.entries.items():
        real = root.load(name)
        real_help = " ".join((real.help or "").split("\n\n")[0].split())
        assert real_help == entry.help, name


def test_help_imports_no_sub_app():
    import subprocess
    import sys

    code = ("import sys; sys.argv=['aixsss-ops','--help']\n"
            "from aixsss_ops.cli.main import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "mods = [m for m in sys.modules if m.startswith('aixsss_ops.cli.') and m not in "
            "('aixsss_ops.cli.main', 'aixsss_ops.cli.common', 'aixsss_ops.cli.lazy')]\n"
            "print(','.join(sorted(mods)), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
