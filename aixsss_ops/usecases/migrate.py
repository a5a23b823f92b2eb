"""Migrations of a deployment (``migrate …`` commands and playbook actions): its database, its migrations folder,
and a backup before a deploy that needs one (none for a database no migration was ever applied to; the database
alone when no object store answers: a migration changes no object)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aixsss_ops import appspec
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.migrate.deploy import DeployResult, deploy
from aixsss_ops.usecases import backup

Say = Callable[[str], None]


def database_url(dep: Deployment) -> str:
    """The app's DATABASE_URL (flag, process environment, env files, the embedded stack); exit 2 when none."""
    return dep.database.value


def migrations_dir(dep: Deployment, given: Path | None = None) -> Path:
    return given if given is not None else appspec.migrations_dir(dep.cfg, dep.cfg.app_source)


def deploy_with_backup(dep: Deployment, migrations: Path, *, backup_first: bool, allow_destructive: bool = False,
                       progress: Say | None = None, **kwargs) -> DeployResult:
    """Apply pending migrations, preceded by a backup when asked (``backup_first``) or when ``allow_destructive``
    lets lint findings through: nothing is taken when nothing is pending. The backup's id is in the result."""
    say = progress or (lambda _m: None)
    url = database_url(dep)
    kwargs.setdefault("statement_lock_timeout", dep.cfg.deploy.migration_statement_lock_timeout)
    plan = deploy(url, migrations, allow_destructive=allow_destructive, dry_run=True, **kwargs)
    backup_id, notes = None, []
    if plan.plan and (backup_first or (allow_destructive and plan.findings)):
        if not plan.already_applied:
            notes.append("no pre-migration backup: no migration was ever applied to this database (nothing to go "
                         "back to)")
        else:
            objects = _store_reachable(dep)
            if not objects:
                notes.append(f"database-only pre-migration backup: no object store answers at {dep.s3.endpoint} "
                             "(a migration changes no object)")
            say(f"taking a pre-migration backup before {len(plan.plan)} migration(s)")
            backup_id = backup.create(dep, label=f"pre-migrate {plan.plan[-1]}", with_objects=objects).id
    result = deploy(url, migrations, allow_destructive=allow_destructive, progress=progress, **kwargs)
    result.backup_id = backup_id
    result.warnings += notes
    return result


def _store_reachable(dep: Deployment) -> bool:
    try:
        dep.s3.client(timeout=3.0).bucket_exists(dep.bucket)
    except Exception:  # unreachable, refused, no such store: the backup leaves the objects out
        return False
    return True
