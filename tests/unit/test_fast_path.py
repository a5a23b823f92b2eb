"""cli/fast.py: which command lines skip the Typer parser, and that they mean what the Typer commands mean."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aixsss_ops.cli.fast import parse
from tests.cli import REPO


@pytest.mark.parametrize(("args", "action", "color", "config", "json_mode"), [
    (["rollback"], "rollback", None, None, False),
    (["--config", "/x/ops.toml", "--json", "rollback"], "rollback", None, "/x/ops.toml", True),
    (["-c", "/x/ops.toml", "rollback", "--json"], "rollback", None, "/x/ops.toml", True),
    (["--config=/y.toml", "deploy", "rollback"], "rollback", None, "/y.toml", False),
    (["switch"], "switch", None, None, False),
    (["-q", "switch", "green"], "switch", "green", None, False),
    (["deploy", "switch", "blue", "--json"], "switch", "blue", None, True),
])
def test_the_fast_command_lines(monkeypatch, args, action, color, config, json_mode):
    monkeypatch.delenv("AIXSSS_OPS_CONFIG", raising=False)
    st, got_action, got_color = parse(args)
    assert (got_action, got_color, st.config_path, st.json_mode) == (action, color, config, json_mode)


@pytest.mark.parametrize("args", [
    [], ["--help"], ["rollback", "--help"], ["rollback", "--to", "r1"], ["rollback", "--restore-db", "latest"],
    ["switch", "purple"], ["switch", "blue", "green"], ["rollback", "--yes"], ["deploy"], ["deploy", "status"],
    ["--version"], ["--config"], ["--config="], ["stack", "rollback"], ["rollback", "extra"],
])
def test_every_other_command_line_goes_to_typer(args):
    assert parse(args) is None


def test_the_config_variable_is_read_as_the_typer_option_reads_it(monkeypatch):
    monkeypatch.setenv("AIXSSS_OPS_CONFIG", "/env/ops.toml")
    assert parse(["rollback"])[0].config_path == "/env/ops.toml"
    assert parse(["-c", "/flag.toml", "rollback"])[0].config_path == "/flag.toml"


def run(entry: str, *args: str) -> subprocess.CompletedProcess:
    code = f"import sys; from {entry} import run; run(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"})


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_an_error_ends_the_fast_path_as_it_ends_the_typer_command(tmp_path, json_flag):
    bad = tmp_path / "ops.toml"
    bad.write_text("runtime = 'nope'\n")
    args = ["--config", str(bad), *json_flag, "rollback"]
    fast = run("aixsss_ops.cli.entry", *args)
    typer = run("aixsss_ops.cli.main", *args)
    assert fast.returncode == typer.returncode == 2
    assert (fast.stdout, fast.stderr) == (typer.stdout, typer.stderr)
    assert "runtime" in fast.stderr


def test_the_fast_path_does_not_import_typer():
    code = ("import sys; from aixsss_ops.cli import fast; fast.run(['--config', '/nonexistent/ops.toml', "
            "'rollback']); print('typer' in sys.modules, 'click' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert p.stdout.strip() == "False False", p.stdout + p.stderr
