"""`app init --from PATH`: a monorepo's checkout described as the app, loadable as ops.toml."""

from __future__ import annotations

import json
from pathlib import Path

from aixsss_ops.appinit import detect, render, write_into
from aixsss_ops.config import load_config
from tests.cli import REPO, run_cli

FIXTURE = REPO / "tests" / "fixtures" / "nodeapp"


def test_the_npm_fixture_is_described_and_the_description_loads(tmp_path):
    d = detect(FIXTURE)
    assert d.manager == "npm" and d.build[0] == ["npm", "ci", "--no-audit", "--no-fund"]
    assert d.build[1] == ["npm", "run", "build", "-w", "packages/shared"]  # the library before the apps
    assert d.build[-1] == ["npm", "run", "build", "-w", "apps/web"]
    assert (d.migrations, d.web_root) == ("apps/api/prisma/migrations", "apps/web/dist")
    cfg_path = tmp_path / "ops.toml"
    cfg_path.write_text('project = "x"\n[ports]\nproxy = 18100\n[app]\nsource = "old"\n[app.processes.api]\n'
                        'command = ["x"]\nport_env = "PORT"\n[backup]\nkeep_last = 3\n')
    write_into(cfg_path, render(d, "2.1.0"))
    cfg = load_config(cfg_path)
    assert cfg.ports.proxy == 18100 and cfg.backup.keep_last == 3  # the other tables are kept
    assert cfg.app.version == "2.1.0" and cfg.app_source == FIXTURE.resolve()
    api, worker = cfg.app.processes["api"], cfg.app.processes["worker"]
    assert (api.command, api.cwd, api.port_env, api.ready.http) == (["node", "dist/main.js"], "apps/api", "PORT",
                                                                    "/api/health")
    assert worker.command == ["node", "dist/worker.js"] and worker.ready.log == r"\[worker\] ready"
    assert worker.stop_timeout >= 120  # covers the worker's job timeout


def _pnpm_repo(root: Path) -> Path:
    (root / "apps" / "api" / "prisma" / "migrations").mkdir(parents=True)
    (root / "apps" / "api" / "prisma" / "migrations" / "migration_lock.toml").write_text('provider = "postgresql"\n')
    (root / "apps" / "worker").mkdir(parents=True)
    (root / "packages" / "shared").mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": "r", "packageManager": "pnpm@9.15.4+sha512.abc"}))
    (root / "pnpm-lock.yaml").write_text("lockfileVersion: '9.0'\n")
    (root / "pnpm-workspace.yaml").write_text("packages:\n  - apps/*\n  - packages/*\n")
    for ws, scripts in (("apps/api", {"build": "tsc", "start:prod": "node dist/main.js"}),
                        ("apps/worker", {"build": "tsc", "start": "node dist/worker.js"}),
                        ("packages/shared", {"build": "tsc"})):
        (root / ws / "package.json").write_text(json.dumps({"name": ws, "scripts": scripts}))
    return root


def test_a_pnpm_monorepo_gets_pnpm_steps_and_prisma_generate(tmp_path):
    d = detect(_pnpm_repo(tmp_path / "repo"))
    pnpm = ["npx", "-y", "pnpm@9.15.4"]
    assert d.build[0] == [*pnpm, "install", "--frozen-lockfile"]
    assert d.build[1] == [*pnpm, "-C", "apps/api", "exec", "prisma", "generate"]
    assert d.build[2] == [*pnpm, "-C", "packages/shared", "build"]
    assert d.web_root is None and any("prisma generate" in n for n in d.notes)


def test_cli_refuses_a_folder_without_package_json_and_writes_with_yes(tmp_path):
    r = run_cli("app", "init", "--from", str(tmp_path))
    assert r.code == 2 and "no package.json" in r.stderr
    cfg = tmp_path / "ops.toml"
    cfg.write_text('project = "y"\n')
    w = run_cli("--yes", "--json", "app", "init", "--from", str(FIXTURE), "--write", config=cfg)
    assert w.code == 0, w.output
    assert load_config(cfg).app.migrations == "apps/api/prisma/migrations" and load_config(cfg).project == "y"
