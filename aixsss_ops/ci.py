"""CI pipelines for the design document's release flow: install, build, test, migrate status gate, deploy,
rollback on failure. Built as data and dumped with PyYAML, so the output is always valid YAML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RELEASE_FROM_STATUS = (
    "python3 -c 'import json,sys; d=json.load(sys.stdin); print(d[\"colors\"][d[\"active\"]][\"release\"])'"
)


@dataclass(frozen=True)
class Options:
    branch: str = "main"
    source: str = "app"  # the app source folder the release is built from (ops.toml app.source)
    config: str = "ops.toml"
    node_version: str = "20"
    pnpm_version: str = "9"
    python_version: str = "3.11"
    runner: str = "self-hosted"  # the deploy job runs on the host (or next to the engine) aixsss-ops operates

    @property
    def migrations_dir(self) -> str:
        return f"{self.source.rstrip('/')}/migrations"


def _install_ops(pip: str = "python3 -m pip") -> str:
    return f"{pip} install --upgrade aixsss-ops\naixsss-ops --version"


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


def github(o: Options = Options()) -> dict[str, Any]:
    deploy_env = {
        "AIXSSS_OPS_CONFIG": o.config,
        "DATABASE_URL": "${{ secrets.DATABASE_URL }}",
        "REDIS_URL": "${{ secrets.REDIS_URL }}",
        "API_KEY_ENCRYPTION_KEY": "${{ secrets.API_KEY_ENCRYPTION_KEY }}",
        "NO_COLOR": "1",
    }
    return {
        "name": "AIXSSS release",
        "on": {
            "push": {"branches": [o.branch]},
            "pull_request": {"branches": [o.branch]},
            "workflow_dispatch": {},
        },
        "concurrency": {"group": "aixsss-release-${{ github.ref }}", "cancel-in-progress": False},
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
                    "DATABASE_URL": "postgresql://postgres:postgres@127.0.0.1:5432/aixsss?schema=public",
                    "REDIS_URL": "redis://127.0.0.1:6379",
                },
                "steps": [
                    {"uses": "actions/checkout@v4"},
                    {"uses": "pnpm/action-setup@v4", "with": {"version": o.pnpm_version}},
                    {"uses": "actions/setup-node@v4", "with": {"node-version": o.node_version, "cache": "pnpm"}},
                    {"uses": "actions/setup-python@v5", "with": {"python-version": o.python_version}},
                    {"name": "Install", "run": "pnpm install --frozen-lockfile\n" + _install_ops()},
                    {"name": "Build", "run": "pnpm -r build"},
                    {"name": "Test", "run": "pnpm -r test"},
                    {"name": "Migrations apply to an empty database",
                     "run": f"aixsss-ops migrate deploy --migrations-dir {o.migrations_dir}\n"
                            f"aixsss-ops migrate status --migrations-dir {o.migrations_dir}"},
                    {"name": "Migrations lint (blue/green safety)",
                     "run": f"aixsss-ops migrate lint --migrations-dir {o.migrations_dir}"},
                ],
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
                    {"name": "Install aixsss-ops", "run": _install_ops()},
                    {"name": "Record the live release", "id": "live",
                     "run": f'echo "release=$(aixsss-ops --json deploy status | {RELEASE_FROM_STATUS})" '
                            '>> "$GITHUB_OUTPUT"'},
                    {"name": "Migrate status gate",
                     "run": "# exit 3 on failed, modified or missing migrations and on unsafe pending ones\n"
                            f"aixsss-ops migrate deploy --dry-run --migrations-dir {o.migrations_dir}"},
                    {"name": "Deploy", "id": "release",
                     "run": "aixsss-ops --yes --json play release --var version=${{ github.sha }} "
                            f"--var source={o.source} > release-run.json"},
                    {"name": "Migrations all applied",
                     "run": f"aixsss-ops migrate status --migrations-dir {o.migrations_dir}"},
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
    return {
        "stages": ["install", "build", "test", "gate", "deploy", "rollback"],
        "default": {"image": f"node:{o.node_version}"},
        "variables": {"PNPM_VERSION": o.pnpm_version},
        "install": {
            "stage": "install",
            "script": ["corepack enable", "corepack prepare pnpm@$PNPM_VERSION --activate",
                       "pnpm install --frozen-lockfile"],
            "artifacts": {"paths": ["node_modules/", "apps/*/node_modules/", "packages/*/node_modules/"],
                          "expire_in": "1 hour"},
        },
        "build": {"stage": "build", "needs": ["install"], "script": ["corepack enable", "pnpm -r build"],
                  "artifacts": {"paths": ["apps/*/dist/"], "expire_in": "1 day"}},
        "test": {
            "stage": "test", "needs": ["install", "build"],
            "services": [{"name": "postgres:16", "alias": "postgres"}, {"name": "redis:7-alpine", "alias": "redis"}],
            "variables": {"POSTGRES_PASSWORD": "postgres", "POSTGRES_DB": "aixsss",
                          "DATABASE_URL": "postgresql://postgres:postgres@postgres:5432/aixsss?schema=public",
                          "REDIS_URL": "redis://redis:6379"},
            "script": ["corepack enable", "pnpm -r test", "apt-get update && apt-get install -y python3-pip",
                       "python3 -m pip install --break-system-packages aixsss-ops",
                       f"aixsss-ops migrate deploy --migrations-dir {o.migrations_dir}",
                       f"aixsss-ops migrate lint --migrations-dir {o.migrations_dir}"],
        },
        "migrate-status-gate": {
            "stage": "gate", "needs": ["test"], "tags": [o.runner], "rules": on_branch, "variables": deploy_vars,
            "script": ["python3 -m pip install --upgrade aixsss-ops",
                       f'echo "LIVE_RELEASE=$(aixsss-ops --json deploy status | {RELEASE_FROM_STATUS})" > live.env',
                       f"aixsss-ops migrate deploy --dry-run --migrations-dir {o.migrations_dir}"],
            "artifacts": {"reports": {"dotenv": "live.env"}},
        },
        "deploy": {
            "stage": "deploy", "needs": ["migrate-status-gate"], "tags": [o.runner], "rules": on_branch,
            "environment": {"name": "production"}, "variables": deploy_vars, "resource_group": "production",
            "script": [f"aixsss-ops --yes --json play release --var version=$CI_COMMIT_SHA --var source={o.source} "
                       "> release-run.json",
                       f"aixsss-ops migrate status --migrations-dir {o.migrations_dir}"],
            "artifacts": {"when": "always", "paths": ["release-run.json"]},
        },
        "rollback": {
            "stage": "rollback", "needs": ["migrate-status-gate", "deploy"], "tags": [o.runner],
            "rules": [{"if": f'$CI_COMMIT_BRANCH == "{o.branch}"', "when": "on_failure"}],
            "variables": deploy_vars, "resource_group": "production",
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
