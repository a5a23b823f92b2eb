"""CI pipelines for the design document's release flow: install, build, test, migrate status gate, deploy,
rollback on failure. The app's part comes from its description in ops.toml (``[app]``: the source, the build
steps, the migrations folder, and whether its build steps or processes run on Node), so the same code prints a
pipeline for the bundled Python app and for a Node monorepo like the real AIXSSS; the deploy job's release playbook
builds and runs the release by the same description. Built as data and dumped with PyYAML, so the output is always valid
YAML; every path in it is relative to the repository root (the checkout's folder)."""

from __future__ import annotations

import math
import posixpath
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from aixsss_ops.errors import UsageError

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig

RELEASE_FROM_STATUS = (
    "python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"colors\"][d[\"active\"]][\"release\"])'"
)
# where every job installs aixsss-ops: a virtualenv of its own (on a self-hosted runner it persists between jobs)
VENV = "$HOME/.aixsss-ops"
# programs that mean the app needs Node on the runner (the first word of a build step or of a process's command)
NODE_TOOLS = frozenset({"node", "npm", "npx", "pnpm", "yarn", "corepack"})
POSTGRES_URL = "postgresql://postgres:postgres@{host}:5432/aixsss?schema=public"
REDIS_URL = "redis://{host}:6379"


@dataclass(frozen=True)
class Step:
    """One build step of the app, as the pipeline runs it: argv in ``cwd`` (relative to the repository root)."""

    run: tuple[str, ...]
    cwd: str = "."
    timeout: float = 900.0
    env: tuple[tuple[str, str], ...] = ()

    def line(self) -> str:
        """The step as one shell line (for GitLab's script): in a subshell, so the folder change does not last."""
        env = ["env", *(f"{k}={v}" for k, v in self.env)] if self.env else []
        cmd = shlex.join([*env, "timeout", f"{math.ceil(self.timeout)}", *self.run])
        return cmd if self.cwd == "." else f"(cd {shlex.quote(self.cwd)} && {cmd})"


@dataclass(frozen=True)
class Options:
    branch: str = "main"
    config: str = "ops.toml"  # the deployment's ops.toml, relative to the repository root
    source: str = "app"  # the app's source folder, relative to the repository root (ops.toml app.source)
    migrations: str = "migrations"  # inside the source (ops.toml app.migrations)
    build: tuple[Step, ...] = ()
    node: bool = False  # the app needs Node (its build steps or processes run node, npm, npx, pnpm, ...)
    install: str = "aixsss-ops"  # the pip requirement every job installs
    tests: tuple[str, ...] = ()  # the app's own test commands (shell lines), run after the migrations
    node_version: str = "20"
    python_version: str = "3.11"
    runner: str = "self-hosted"  # the deploy job runs on the host (or next to the engine) aixsss-ops operates

    @property
    def migrations_dir(self) -> str:
        return posixpath.normpath(posixpath.join(self.source, self.migrations))


def _inside(root: Path, p: Path, what: str) -> str:
    """``p`` relative to the repository root ``root`` (posix); refused when it is outside it."""
    p = p.resolve()
    if p != root and root not in p.parents:
        raise UsageError(f"{what} {p} is outside the repository root {root}: the pipeline checks out one repository",
                         hint="run `aixsss-ops ci` in the repository root that holds the app and ops.toml "
                              "(app.source relative to it, e.g. \".\"), or pass --source")
    return p.relative_to(root).as_posix() or "."


def default_install(version: str) -> str:
    return f"aixsss-ops=={version}"


def options(cfg: OpsConfig, root: Path, *, version: str, branch: str = "main", runner: str = "self-hosted",
            install: str | None = None, source: str | None = None, tests: tuple[str, ...] = ()) -> Options:
    """The pipeline's options from the app description in ``cfg``, for a repository checked out at ``root``
    (paths in the pipeline are relative to it). ``install``: the pip requirement of aixsss-ops (else ops.toml
    ``[ci] install``, else exactly ``version``); ``source``: the app's folder in the repository, overriding
    ``app.source``."""
    root = root.resolve()
    config = _inside(root, cfg.config_path or root / "ops.toml", "the configuration file")
    if source is not None:
        src = PurePosixPath(source)
        if src.is_absolute() or ".." in src.parts:
            raise UsageError(f"--source {source}: give the app's folder relative to the repository root")
        src_rel = posixpath.normpath(source)
    else:
        src_rel = _inside(root, cfg.app_source, "the app source")
    steps = tuple(Step(run=tuple(s.run), cwd=posixpath.normpath(posixpath.join(src_rel, s.cwd)), timeout=s.timeout,
                       env=tuple(sorted(s.env.items()))) for s in cfg.app.build)
    first_words = [s.run[0] for s in steps] + [p.command[0] for p in cfg.app.processes.values()]
    node = any(PurePosixPath(w).name in NODE_TOOLS for w in first_words)
    return Options(branch=branch, config=config, source=src_rel, migrations=cfg.app.migrations, build=steps,
                   node=node, install=install or cfg.ci.install or default_install(version), tests=tuple(tests),
                   runner=runner)


def _install_lines(path_line: str) -> list[str]:
    """Create (or reuse) the job's virtualenv, install the pinned aixsss-ops into it, put it on PATH."""
    return [
        f'python3 -m venv "{VENV}"',
        f'"{VENV}/bin/python" -m pip install "$AIXSSS_OPS_INSTALL"',
        path_line,
        f'"{VENV}/bin/aixsss-ops" --version',  # by its path: GitHub puts $GITHUB_PATH on PATH from the next step on
    ]


def _rollback_script(live: str) -> str:
    return (
        f'live_before="{live}"\n'
        'if [ -z "$live_before" ]; then echo "no release was live before this job: nothing to roll back"; exit 0; fi\n'
        f"now=$(aixsss-ops --json deploy status | {RELEASE_FROM_STATUS})\n"
        'if [ "$now" = "$live_before" ]; then\n'
        '  echo "$live_before is live (the release playbook rolled back already): nothing to do"\n'
        "else\n"
        '  aixsss-ops --yes --json rollback --to "$live_before"\n'
        "fi\n"
    )


def _migrations_lines(o: Options) -> tuple[str, str]:
    d = shlex.quote(o.migrations_dir)
    return (f"aixsss-ops migrate deploy --migrations-dir {d}\naixsss-ops migrate status --migrations-dir {d}",
            f"aixsss-ops migrate lint --migrations-dir {d}")


def _play(o: Options, version: str) -> str:
    return (f"aixsss-ops --yes --json play release --var version={version} --var source={shlex.quote(o.source)} "
            "> release-run.json")


def github(o: Options = Options()) -> dict[str, Any]:
    deploy_env = {
        "AIXSSS_OPS_CONFIG": o.config,
        "DATABASE_URL": "${{ secrets.DATABASE_URL }}",
        "REDIS_URL": "${{ secrets.REDIS_URL }}",
        "API_KEY_ENCRYPTION_KEY": "${{ secrets.API_KEY_ENCRYPTION_KEY }}",
        "NO_COLOR": "1",
    }
    d = shlex.quote(o.migrations_dir)
    install = {"name": "Install aixsss-ops", "run": "\n".join(_install_lines(f'echo "{VENV}/bin" >> "$GITHUB_PATH"'))
               + "\n"}
    setup = [{"uses": "actions/checkout@v4"},
             {"uses": "actions/setup-python@v5", "with": {"python-version": o.python_version}}]
    if o.node:
        setup.append({"uses": "actions/setup-node@v4", "with": {"node-version": o.node_version}})
    build = []
    for i, s in enumerate(o.build, 1):
        step: dict[str, Any] = {"name": f"Build {i}/{len(o.build)}: {shlex.join(s.run)}", "run": shlex.join(s.run)}
        if s.cwd != ".":
            step["working-directory"] = s.cwd
        if s.env:
            step["env"] = dict(s.env)
        step["timeout-minutes"] = max(1, math.ceil(s.timeout / 60))
        build.append(step)
    apply, lint = _migrations_lines(o)
    test_steps = [*setup, install, *build,
                  {"name": "Migrations apply to an empty database", "run": apply},
                  {"name": "Migrations lint (blue/green safety)", "run": lint}]
    if o.tests:
        test_steps.append({"name": "Test", "run": "\n".join(o.tests)})
    return {
        "name": "AIXSSS release",
        "on": {
            "push": {"branches": [o.branch]},
            "pull_request": {"branches": [o.branch]},
            "workflow_dispatch": {},
        },
        "concurrency": {"group": "aixsss-release-${{ github.ref }}", "cancel-in-progress": False},
        "env": {"AIXSSS_OPS_INSTALL": o.install},  # the aixsss-ops every job installs (pip requirement)
        "jobs": {
            "test": {
                "name": "install, build, test",
                "runs-on": "ubuntu-latest",
                "services": {
                    "postgres": {
                        "image": "postgres:16",
                        "env": {"POSTGRES_PASSWORD": "postgres", "POSTGRES_DB": "aixsss"},
                        "ports": ["5432:5432"],
                        "options": "--health-cmd pg_isready --health-interval 5s --health-timeout 5s --health-retries 10",
                    },
                    "redis": {"image": "redis:7-alpine", "ports": ["6379:6379"]},
                },
                "env": {
                    "DATABASE_URL": POSTGRES_URL.format(host="127.0.0.1"),
                    "REDIS_URL": REDIS_URL.format(host="127.0.0.1"),
                    "NO_COLOR": "1",
                },
                "steps": test_steps,
            },
            "deploy": {
                "name": "deploy (blue/green, rollback on failure)",
                "needs": "test",
                "if": f"github.event_name != 'pull_request' && github.ref == 'refs/heads/{o.branch}'",
                "runs-on": o.runner,
                "environment": "production",
                "env": deploy_env,
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    dict(install),  # a copy: the workflow is dumped without YAML anchors
                    {"name": "Record the live release", "id": "live",
                     "run": f'echo "release=$(aixsss-ops --json deploy status | {RELEASE_FROM_STATUS})" '
                            '>> "$GITHUB_OUTPUT"'},
                    {"name": "Migrate status gate",
                     "run": "# exit 3 on failed, modified or missing migrations and on unsafe pending ones\n"
                            f"aixsss-ops migrate deploy --dry-run --migrations-dir {d}"},
                    {"name": "Deploy", "id": "release", "run": _play(o, "${{ github.sha }}")},
                    {"name": "Migrations all applied", "run": f"aixsss-ops migrate status --migrations-dir {d}"},
                    {"name": "Roll back on failure", "if": "failure()",
                     "run": _rollback_script("${{ steps.live.outputs.release }}")},
                    {"name": "Keep the run record", "if": "always()", "uses": "actions/upload-artifact@v4",
                     "with": {"name": "release-run", "path": "release-run.json", "if-no-files-found": "ignore"}},
                ],
            },
        },
    }


def gitlab(o: Options = Options()) -> dict[str, Any]:
    on_branch = [{"if": f'$CI_COMMIT_BRANCH == "{o.branch}"'}]
    deploy_vars = {"AIXSSS_OPS_CONFIG": o.config, "NO_COLOR": "1"}
    install = _install_lines(f'export PATH="{VENV}/bin:$PATH"')  # one list: dumped once, then as an alias
    apply, lint = _migrations_lines(o)
    image = (f"nikolaik/python-nodejs:python{o.python_version}-nodejs{o.node_version}" if o.node
             else f"python:{o.python_version}")
    return {
        "stages": ["test", "gate", "deploy", "rollback"],
        "variables": {"AIXSSS_OPS_INSTALL": o.install},
        "test": {
            "stage": "test",
            "image": image,
            "services": [{"name": "postgres:16", "alias": "postgres"}, {"name": "redis:7-alpine", "alias": "redis"}],
            "variables": {"POSTGRES_PASSWORD": "postgres", "POSTGRES_DB": "aixsss",
                          "DATABASE_URL": POSTGRES_URL.format(host="postgres"),
                          "REDIS_URL": REDIS_URL.format(host="redis"), "NO_COLOR": "1"},
            "before_script": install,
            "script": [*(s.line() for s in o.build), *apply.split("\n"), lint, *o.tests],
        },
        "migrate-status-gate": {
            "stage": "gate", "needs": ["test"], "tags": [o.runner], "rules": on_branch, "variables": deploy_vars,
            "before_script": install,
            "script": [f'echo "LIVE_RELEASE=$(aixsss-ops --json deploy status | {RELEASE_FROM_STATUS})" > live.env',
                       f"aixsss-ops migrate deploy --dry-run --migrations-dir {shlex.quote(o.migrations_dir)}"],
            "artifacts": {"reports": {"dotenv": "live.env"}},
        },
        "deploy": {
            "stage": "deploy", "needs": ["migrate-status-gate"], "tags": [o.runner], "rules": on_branch,
            "environment": {"name": "production"}, "variables": deploy_vars, "resource_group": "production",
            "before_script": install,
            "script": [_play(o, "$CI_COMMIT_SHA"),
                       f"aixsss-ops migrate status --migrations-dir {shlex.quote(o.migrations_dir)}"],
            "artifacts": {"when": "always", "paths": ["release-run.json"]},
        },
        "rollback": {
            "stage": "rollback", "needs": ["migrate-status-gate", "deploy"], "tags": [o.runner],
            "rules": [{"if": f'$CI_COMMIT_BRANCH == "{o.branch}"', "when": "on_failure"}],
            "variables": deploy_vars, "resource_group": "production",
            "before_script": install,
            "script": [_rollback_script("$LIVE_RELEASE")],
        },
    }


def dump(doc: dict[str, Any]) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=120, default_flow_style=False)
