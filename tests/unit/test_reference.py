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
