"""`aixsss-ops ci github|gitlab`: the generated pipelines parse as YAML, have the seed's stages in order, and every
aixsss-ops command they run exists with the options they pass."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import typer.main
import yaml

from aixsss_ops.cli.main import app
from tests.cli import run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"


def _commands(script: str) -> list[list[str]]:
    """Every `aixsss-ops ...` invocation in a shell script, as argv (redirections and pipes cut off)."""
    out = []
    for m in re.finditer(r"(?:^|\$\(|;|&&)[ \t]*aixsss-ops[ \t]+([^|>)\n]*)", script, re.M):
        out.append(shlex.split(m.group(1).replace("${{", "X").replace("}}", "X")))
    return out


def _check_command(argv: list[str]) -> str:
    """The command path; fails when a command or an option does not exist."""
    cmd = typer.main.get_command(app)  # Typer ships its own click: duck-typed below
    cmd.load_all()  # the root imports its sub-apps lazily
    path = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a.startswith("-"):
            name = a.split("=", 1)[0]
            opt = next((p for p in cmd.params if p.param_type_name == "option" and name in p.opts), None)
            assert opt is not None, f"aixsss-ops {' '.join(path)}: no option {name} (in {argv})"
            if not opt.is_flag and "=" not in a:
                args.pop(0)
            continue
        if a in getattr(cmd, "commands", {}):
            cmd = cmd.commands[a]
            path.append(a)
            continue
        arguments = [p for p in cmd.params if p.param_type_name == "argument"]
        assert arguments, f"aixsss-ops {' '.join(path)}: unexpected argument {a!r} (in {argv})"
    complete = not hasattr(cmd, "commands") or cmd.invoke_without_command or argv == ["--version"]
    assert complete, f"incomplete command {argv}"
    return " ".join(path)


def test_github_workflow_parses_and_has_the_pipeline():
    r = run_cli("ci", "github")
    assert r.code == 0, r.output
    wf = yaml.safe_load(r.stdout)
    assert set(wf["on"]) == {"push", "pull_request", "workflow_dispatch"}
    assert wf["on"]["push"]["branches"] == ["main"]
    assert set(wf["jobs"]) == {"test", "deploy"}
    test, deploy = wf["jobs"]["test"], wf["jobs"]["deploy"]
    names = [s.get("name") for s in test["steps"]]
    assert names.index("Install") < names.index("Build") < names.index("Test")
    assert {"postgres", "redis"} <= set(test["services"])
    assert deploy["needs"] == "test" and "refs/heads/main" in deploy["if"] and deploy["environment"] == "production"
    steps = {s.get("name"): s for s in deploy["steps"]}
    order = [s.get("name") for s in deploy["steps"]]
    assert (order.index("Record the live release") < order.index("Migrate status gate") < order.index("Deploy")
            < order.index("Migrations all applied") < order.index("Roll back on failure"))
    assert "migrate deploy --dry-run" in steps["Migrate status gate"]["run"]
    assert "play release" in steps["Deploy"]["run"] and "--yes" in steps["Deploy"]["run"]
    rb = steps["Roll back on failure"]
    assert rb["if"] == "failure()" and "steps.live.outputs.release" in rb["run"]
    assert "rollback --to" in rb["run"]
    assert wf["concurrency"]["cancel-in-progress"] is False
    # secrets come from the CI's store, never inline
    assert all(v.startswith("${{ secrets.") for k, v in deploy["env"].items() if k.endswith(("URL", "KEY")))
    used = {_check_command(a) for s in test["steps"] + deploy["steps"] for a in _commands(s.get("run", ""))}
    assert {"migrate deploy", "migrate status", "migrate lint", "deploy status", "play", "rollback"} <= used


def test_options_change_the_workflow():
    r = run_cli("--json", "ci", "github", "--branch", "release", "--source", "services/app", "--runner", "prod-host")
    assert r.code == 0, r.output
    wf = r.json
    assert wf["on"]["push"]["branches"] == ["release"]
    assert wf["jobs"]["deploy"]["runs-on"] == "prod-host"
    gate = next(s for s in wf["jobs"]["deploy"]["steps"] if s.get("name") == "Migrate status gate")
    assert "--migrations-dir services/app/migrations" in gate["run"]


def test_gitlab_pipeline_parses_and_docs_show_it():
    r = run_cli("ci", "gitlab")
    assert r.code == 0, r.output
    pl = yaml.safe_load(r.stdout)
    assert pl["stages"] == ["install", "build", "test", "gate", "deploy", "rollback"]
    assert pl["rollback"]["rules"][0]["when"] == "on_failure"
    assert pl["deploy"]["needs"] == ["migrate-status-gate"]
    for job in ("install", "build", "test", "migrate-status-gate", "deploy", "rollback"):
        for line in pl[job]["script"]:
            for argv in _commands(line):
                _check_command(argv)
    block = DOC.read_text().split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert block == r.stdout.rstrip("\n"), "docs/ci.md is stale: paste the output of `aixsss-ops ci gitlab`"


def test_the_command_checker_catches_a_wrong_command():
    import pytest

    with pytest.raises(AssertionError):
        _check_command(["migrate", "deploy", "--dry-runn"])
    with pytest.raises(AssertionError):
        _check_command(["migrat", "status"])
