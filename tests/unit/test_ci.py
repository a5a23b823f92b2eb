"""`aixsss-ops ci github|gitlab`: the generated pipelines parse as YAML, follow the app description in ops.toml
(build steps, migrations folder, whether the app needs Node), install a pinned aixsss-ops, and every aixsss-ops
command they run exists with the options they pass. tests/integration/test_ci_pipelines.py runs them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import typer.main
import yaml

from aixsss_ops import __version__
from aixsss_ops import ci as ci_mod
from aixsss_ops.cli.main import app
from aixsss_ops.config import load_config
from tests.cli import EXE, run_cli
from tests.conftest import node_app_toml

DOC = Path(__file__).resolve().parents[2] / "docs" / "ci.md"

REAL_AIXSSS = '''
[app]
source = "."
migrations = "apps/api/prisma/migrations"
web_root = "apps/web/dist"

[[app.build]]
run = ["npx", "-y", "pnpm@9.15.4", "install", "--frozen-lockfile"]
timeout = 900

[[app.build]]
run = ["npx", "-y", "pnpm@9.15.4", "exec", "vite", "build"]
cwd = "apps/web"
timeout = 600
env = { VITE_DATA_MODE = "api", VITE_API_BASE_PATH = "/api" }

[app.processes.api]
command = ["node", "dist/main.js"]
cwd = "apps/api"
port_env = "PORT"
'''


def _commands(script: str) -> list[list[str]]:
    """Every `aixsss-ops ...` invocation in a shell script, as argv (redirections and pipes cut off)."""
    out = []
    for m in re.finditer(r"(?:^|\$\(|;|&&)[ \t]*\"?[^\s\"]*aixsss-ops\"?[ \t]+([^|>)\n]*)", script, re.M):
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


def ci_in(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`aixsss-ops ci ...` run in ``root`` (the repository root the pipeline's paths are relative to)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    e.update(env or {}, NO_COLOR="1")
    return subprocess.run([EXE, "ci", *args], cwd=root, env=e, capture_output=True, text=True, timeout=60)


def _pipeline(tmp_path: Path, toml: str, kind: str = "github", **kw):
    (tmp_path / "ops.toml").write_text(toml)
    opts = ci_mod.options(load_config(tmp_path / "ops.toml"), tmp_path, version="9.9.9", **kw)
    return opts, (ci_mod.github(opts) if kind == "github" else ci_mod.gitlab(opts))


def test_github_workflow_for_the_bundled_app():
    r = run_cli("ci", "github")  # in the repository root: its ops.toml describes the bundled app under app/
    assert r.code == 0, r.output
    wf = yaml.safe_load(r.stdout)
    assert "&id" not in r.stdout and "*id" not in r.stdout  # no YAML anchors in a workflow
    assert set(wf["on"]) == {"push", "pull_request", "workflow_dispatch"}
    assert wf["on"]["push"]["branches"] == ["main"]
    assert wf["env"]["AIXSSS_OPS_INSTALL"] == f"aixsss-ops=={__version__}"  # exactly the version that printed it
    assert set(wf["jobs"]) == {"test", "deploy"}
    test, deploy = wf["jobs"]["test"], wf["jobs"]["deploy"]
    uses = [s["uses"].split("@")[0] for s in test["steps"] if "uses" in s]
    assert uses == ["actions/checkout", "actions/setup-python"]  # a Python app: no Node
    names = [s.get("name") for s in test["steps"] if "name" in s]
    assert names == ["Install aixsss-ops", "Migrations apply to an empty database", "Migrations lint (blue/green safety)"]
    assert "--migrations-dir app/migrations" in test["steps"][-1]["run"]
    assert not any("pnpm" in s.get("run", "") for s in test["steps"])
    assert {"postgres", "redis"} <= set(test["services"])
    assert deploy["needs"] == "test" and "refs/heads/main" in deploy["if"] and deploy["environment"] == "production"
    steps = {s.get("name"): s for s in deploy["steps"]}
    order = [s.get("name") for s in deploy["steps"]]
    assert (order.index("Install aixsss-ops") < order.index("Record the live release") < order.index("Migrate status gate")
            < order.index("Deploy") < order.index("Migrations all applied") < order.index("Roll back on failure"))
    assert "migrate deploy --dry-run --migrations-dir app/migrations" in steps["Migrate status gate"]["run"]
    assert "play release" in steps["Deploy"]["run"] and "--var source=app " in steps["Deploy"]["run"]
    rb = steps["Roll back on failure"]
    assert rb["if"] == "failure()" and "steps.live.outputs.release" in rb["run"]
    assert "rollback --to" in rb["run"]
    assert wf["concurrency"]["cancel-in-progress"] is False
    assert deploy["env"]["AIXSSS_OPS_CONFIG"] == "ops.toml"
    # secrets come from the CI's store, never inline
    assert all(v.startswith("${{ secrets.") for k, v in deploy["env"].items() if k.endswith(("URL", "KEY")))
    used = {_check_command(a) for s in test["steps"] + deploy["steps"] for a in _commands(s.get("run", ""))}
    assert {"migrate deploy", "migrate status", "migrate lint", "deploy status", "play", "rollback"} <= used


def test_the_node_fixture_description_gives_node_and_its_build_steps(tmp_path):
    opts, wf = _pipeline(tmp_path, "[app]\n" + node_app_toml(Path(".")))
    assert opts.source == "." and opts.node and opts.migrations_dir == "apps/api/prisma/migrations"
    steps = wf["jobs"]["test"]["steps"]
    node = next(s for s in steps if s.get("uses", "").startswith("actions/setup-node"))
    assert node["with"]["node-version"] == "20"
    build = [s for s in steps if s.get("name", "").startswith("Build ")]
    assert [(s["run"], s["timeout-minutes"]) for s in build] == [("npm ci --no-audit --no-fund", 15),
                                                                ("npm run build", 5)]
    assert all("working-directory" not in s for s in build)  # the source is the repository root
    names = [s.get("name") for s in steps]
    assert names.index("Install aixsss-ops") < names.index(build[0]["name"]) < names.index(
        "Migrations apply to an empty database")
    apply = next(s for s in steps if s.get("name") == "Migrations apply to an empty database")
    assert "--migrations-dir apps/api/prisma/migrations" in apply["run"]
    deploy = {s.get("name"): s for s in wf["jobs"]["deploy"]["steps"]}
    assert "--var source=. " in deploy["Deploy"]["run"]
    _, pl = _pipeline(tmp_path, "[app]\n" + node_app_toml(Path(".")), "gitlab")
    assert pl["test"]["image"] == "nikolaik/python-nodejs:python3.11-nodejs20"
    assert pl["test"]["script"][:2] == ["timeout 900 npm ci --no-audit --no-fund", "timeout 300 npm run build"]


def test_build_steps_keep_their_folder_env_and_timeout(tmp_path):
    _, wf = _pipeline(tmp_path, REAL_AIXSSS)
    vite = next(s for s in wf["jobs"]["test"]["steps"] if s.get("name", "").startswith("Build 2/2"))
    assert vite["run"] == "npx -y pnpm@9.15.4 exec vite build"
    assert vite["working-directory"] == "apps/web" and vite["timeout-minutes"] == 10
    assert vite["env"] == {"VITE_API_BASE_PATH": "/api", "VITE_DATA_MODE": "api"}
    _, pl = _pipeline(tmp_path, REAL_AIXSSS, "gitlab")
    assert pl["test"]["script"][1] == ("(cd apps/web && env VITE_API_BASE_PATH=/api VITE_DATA_MODE=api timeout 600 "
                                       "npx -y pnpm@9.15.4 exec vite build)")
    # the source in a sub-folder of the repository: build folders and migrations are under it
    opts, wf = _pipeline(tmp_path, REAL_AIXSSS.replace('source = "."', 'source = "services/aixsss"'))
    assert opts.migrations_dir == "services/aixsss/apps/api/prisma/migrations"
    first = next(s for s in wf["jobs"]["test"]["steps"] if s.get("name", "").startswith("Build 1/2"))
    assert first["working-directory"] == "services/aixsss"


def test_the_install_requirement_is_pinned(tmp_path):
    toml = "[app]\n" + node_app_toml(Path("."))
    opts, _ = _pipeline(tmp_path, toml)
    assert opts.install == "aixsss-ops==9.9.9"  # the version that prints the pipeline
    git = "aixsss-ops @ git+https://git.example.com/ops/aixsss-ops.git@v0.3.0"
    opts, wf = _pipeline(tmp_path, f'[ci]\ninstall = "{git}"\n\n' + toml)
    assert wf["env"]["AIXSSS_OPS_INSTALL"] == git
    install = next(s for s in wf["jobs"]["test"]["steps"] if s.get("name") == "Install aixsss-ops")["run"]
    assert '-m pip install "$AIXSSS_OPS_INSTALL"' in install  # quoted: a requirement with spaces stays one word
    opts, pl = _pipeline(tmp_path, f'[ci]\ninstall = "{git}"\n\n' + toml, "gitlab", install="dist/ops.whl")
    assert pl["variables"]["AIXSSS_OPS_INSTALL"] == "dist/ops.whl"  # --install wins over ops.toml
    assert all(pl[j]["before_script"][1].endswith('pip install "$AIXSSS_OPS_INSTALL"')
               for j in ("test", "migrate-status-gate", "deploy", "rollback"))
    r = ci_in(tmp_path, "github", "--install", "aixsss-ops==0.3.0")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["env"]["AIXSSS_OPS_INSTALL"] == "aixsss-ops==0.3.0"
    help_text = run_cli("ci", "github", "--help").stdout
    assert "--install" in help_text and "ci.install" in help_text and "git+https" in help_text


def test_paths_are_relative_to_the_repository_root(tmp_path):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "ops.toml").write_text('[app]\nsource = "../elsewhere"\n')
    r = ci_in(tmp_path / "repo", "github")
    assert r.returncode == 2 and "outside the repository root" in r.stderr
    r = ci_in(tmp_path / "repo", "github", "--source", "../x")
    assert r.returncode == 2 and "relative to the repository root" in r.stderr
    r = ci_in(tmp_path / "repo", "--json", "github", "--source", "services/app", "--branch", "release", "--runner",
              "prod-host", "--test", "pnpm -r test")
    wf = yaml.safe_load(r.stdout)
    assert wf["on"]["push"]["branches"] == ["release"]
    assert wf["jobs"]["deploy"]["runs-on"] == "prod-host"
    gate = next(s for s in wf["jobs"]["deploy"]["steps"] if s.get("name") == "Migrate status gate")
    assert "--migrations-dir services/app/migrations" in gate["run"]
    assert wf["jobs"]["test"]["steps"][-1] == {"name": "Test", "run": "pnpm -r test"}


def test_gitlab_pipeline_parses_and_docs_show_it():
    r = run_cli("ci", "gitlab")
    assert r.code == 0, r.output
    pl = yaml.safe_load(r.stdout)
    assert pl["stages"] == ["test", "gate", "deploy", "rollback"]
    assert pl["test"]["image"] == "python:3.11"
    assert pl["variables"]["AIXSSS_OPS_INSTALL"] == f"aixsss-ops=={__version__}"
    assert pl["rollback"]["rules"][0]["when"] == "on_failure"
    assert pl["deploy"]["needs"] == ["migrate-status-gate"]
    for job in ("test", "migrate-status-gate", "deploy", "rollback"):
        for line in pl[job]["before_script"] + pl[job]["script"]:
            for argv in _commands(line):
                _check_command(argv)
    block = DOC.read_text().split("```yaml\n", 1)[1].split("\n```", 1)[0]
    assert block == r.stdout.rstrip("\n"), "docs/ci.md is stale: paste the output of `aixsss-ops ci gitlab`"


def test_the_command_checker_catches_a_wrong_command():
    with pytest.raises(AssertionError):
        _check_command(["migrate", "deploy", "--dry-runn"])
    with pytest.raises(AssertionError):
        _check_command(["migrat", "status"])
    assert _commands('"$HOME/.aixsss-ops/bin/aixsss-ops" --version') == [["--version"]]
