"""--json: every exit prints exactly one JSON document on stdout (usage errors, bad configuration, a failing
command), and --json is accepted after the subcommand too."""

from __future__ import annotations

import json

import pytest

from tests.cli import run_cli


def one_document(stdout: str):
    doc, end = json.JSONDecoder().raw_decode(stdout.strip())
    assert stdout.strip()[end:].strip() == "", f"more than one document: {stdout!r}"
    return doc


@pytest.mark.parametrize("args", [
    ["--json", "backup", "restore", "x", "--bogus"],
    ["--json", "nosuchcommand"],
    ["--json"],
    ["queue", "stats", "--json", "--nope"],
    ["--json", "backup", "verify"],  # a missing argument
])
def test_usage_errors_print_one_json_document(args):
    r = run_cli(*args)
    assert r.code == 2, r.output
    doc = one_document(r.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and doc["error"]
    assert "Usage:" in r.stderr  # the human hint stays on stderr


def test_a_bad_configuration_prints_one_json_document(tmp_path):
    bad = tmp_path / "ops.toml"
    bad.write_text('[ports]\npostgres = "x"\n')
    for args in (["--json", "config", "show"], ["doctor", "--only", "env", "--json"]):
        r = run_cli(*args, config=bad)
        assert r.code == 2, r.output
        doc = one_document(r.stdout)
        assert doc["exit_code"] == 2 and "ports.postgres" in doc["error"]


def test_json_after_the_subcommand(tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[backup]\ndir = "{tmp_path / "backups"}"\n')
    r = run_cli("backup", "list", "--json", config=cfg)
    assert r.code == 0, r.output
    assert one_document(r.stdout) == {"backups": [], "pitr": None}
    r = run_cli("config", "show", "--json", config=cfg)
    assert r.code == 0 and one_document(r.stdout)["state_dir"] == str(tmp_path / "state")
    # after `--` it is an argument, not the option
    r = run_cli("play", "--dry-run", "--", "--json", config=cfg)
    assert r.code == 2 and not r.stdout.strip().startswith("{")
