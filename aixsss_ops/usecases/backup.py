"""Backups of a deployment: take one, verify one, restore one. ``backup …`` commands, playbook actions, the
pre-deploy and pre-migration backups all call these.

Where they read from and write to comes from the ``Deployment``: the admin database target, the S3 target and
bucket, the keys; the catalogue is backup/location.py's.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from aixsss_ops import appspec
from aixsss_ops.backup.catalog import Entry
from aixsss_ops.backup.create import CreateOptions, CreateResult, Reporter, create_backup
from aixsss_ops.backup.crypt import load_key
from aixsss_ops.backup.location import catalog, jobs
from aixsss_ops.backup.prune import Policy
from aixsss_ops.backup.restore import RestorePlan, execute_restore, plan_restore
from aixsss_ops.backup.verify import VerifyResult, verify_backup
from aixsss_ops.context.deployment import EMBEDDED_ADMIN, PREVIOUS_KEY, Deployment
from aixsss_ops.crypto import derive_key
from aixsss_ops.dburl import PgTarget, parse_database_url
from aixsss_ops.errors import UsageError
from aixsss_ops.output import scrubber

Say = Callable[[str], None]


def database(dep: Deployment) -> PgTarget:
    """The database a backup reads and a restore replaces (the admin target)."""
    return parse_database_url(dep.admin_database.value)


def drop_scratch_orphans(dep: Deployment) -> list[str]:
    """Drop the scratch databases of restores and verifies that were killed (see backup/scratch.py)."""
    from aixsss_ops.backup.postgres import admin_target
    from aixsss_ops.backup.scratch import drop_orphans

    return drop_orphans(admin_target(database(dep)))


def backup_key(dep: Deployment, required: bool) -> bytes | None:
    """The backup key: encrypts (when required), signs and authenticates manifests when set."""
    s = dep.backup_key
    if s is None and not required:
        return None
    return load_key(s.value if s else None, f"${dep.cfg.backup.encryption_key_env}")


def api_key(dep: Deployment, name: str = "API_KEY_ENCRYPTION_KEY") -> tuple[bytes | None, str | None]:
    """The derived provider-key encryption key named ``name`` and where it came from."""
    s = dep.api_key(name)
    return (derive_key(s.value), f"{name} from {s.source}") if s else (None, None)


def app_info(dep: Deployment) -> dict:
    info = {"version": dep.cfg.app.version, "active_color": None}
    with suppress(Exception):
        state = dep.deploy_state.load()
        if state:
            spec = state.spec(state.active)
            info = {"active_color": state.active, "version": spec.version if spec else None}
    return info


def create(dep: Deployment, *, label: str | None = None, keep: bool = False, requested_jobs: int | None = None,
           with_objects: bool = True, encrypt: bool | None = None, reporter: Reporter | None = None) -> CreateResult:
    """One restore point of the deployment (``backup create``, the pre-deploy and pre-migration backups)."""
    b = dep.cfg.backup
    do_encrypt = b.encrypt if encrypt is None else encrypt
    key = backup_key(dep, required=do_encrypt)  # also signs the manifest when set without encryption
    opts = CreateOptions(
        label=label, jobs=jobs(dep, requested_jobs), compression=b.compression,
        encryption_key=key if do_encrypt else None, signing_key=key, api_key=api_key(dep)[0],
        app=app_info(dep), keep=keep, retention_days=Policy(b.keep_last, b.keep_daily, b.keep_weekly).horizon_days,
        noncurrent_version_days=b.noncurrent_version_days,
    )
    return create_backup(catalog(dep), database(dep), dep.s3 if with_objects else None,
                         dep.bucket if with_objects else None, opts, reporter or Reporter())


def verify(dep: Deployment, cat, entry: Entry, *, restore: bool = False, with_objects: bool = True,
           requested_jobs: int | None = None, say: Say = lambda _m: None) -> VerifyResult:
    """Check a backup's files (and with ``restore``, restore it into a scratch database and compare)."""
    objs = restore and with_objects and entry.manifest.get("objects") is not None
    _clean(cat, say)
    with cat.fetch(entry) as local:  # an S3 destination: downloaded first; a local one: itself
        return verify_backup(cat, local, key=backup_key(dep, required=False), key_env=dep.cfg.backup.encryption_key_env,
                             restore=restore, pg=database(dep) if restore else None, s3=dep.s3 if objs else None,
                             jobs=jobs(dep, requested_jobs), phase=say)


def _clean(cat, say: Say) -> None:
    """The remains of killed runs (partial backups, work folders with decrypted dumps) go before new work."""
    for name in cat.cleanup():
        say(f"removed {name}, left by a killed run")


@dataclass(frozen=True)
class RestoreRequest:
    db_only: bool = False
    objects_only: bool = False
    target_db: str | None = None
    force: bool = False
    old_key: str | None = None  # the API_KEY_ENCRYPTION_KEY of the backup's time (else the previous key)
    apply_globals: bool = True
    checksums: bool = False


def plan(dep: Deployment, entry: Entry, req: RestoreRequest) -> RestorePlan:
    """What a restore of ``entry`` would do; nothing is changed."""
    if req.db_only and req.objects_only:
        raise UsageError("--db-only and --objects-only exclude each other")
    has_objects = entry.manifest.get("objects") is not None
    if req.objects_only and not has_objects:
        raise UsageError(f"backup {entry.id} has no object manifest")
    if req.target_db and req.objects_only:
        raise UsageError("--target-db restores a database; --objects-only restores no database")
    db = not req.objects_only
    # a restore into another database leaves the live app's objects as they are
    objs = req.objects_only or (not req.db_only and not req.target_db and has_objects)
    if req.old_key:
        scrubber.add(req.old_key)
        old, old_source = derive_key(req.old_key), "--old-key"
    else:
        old, old_source = api_key(dep, PREVIOUS_KEY)
    p = plan_restore(
        entry, pg=database(dep) if db else None, s3=dep.s3 if objs else None, db=db, objs=objs,
        target_db=req.target_db or None, migrations_dir=appspec.migrations_dir(dep.cfg, dep.cfg.app_source), force=req.force,
        backup_key=backup_key(dep, required=False), backup_key_env=dep.cfg.backup.encryption_key_env,
        current_api_key=api_key(dep)[0], old_api_key=old, old_api_key_source=old_source,
        env_hint=str(dep.layout.env_file("api")), apply_globals=req.apply_globals, checksums=req.checksums,
    )
    if req.target_db and has_objects and not req.db_only:
        p.warnings.append(f"objects are not restored into the live bucket with --target-db (the live app's); "
                          f"`restore {entry.id} --objects-only` restores them")
    return p


def execute(dep: Deployment, cat, entry: Entry, the_plan: RestorePlan, *, requested_jobs: int | None = None,
            say: Say = lambda _m: None) -> dict:
    """Carry out a restore plan: the app of the embedded stack is stopped while its database is swapped."""
    _clean(cat, say)
    stop_app, start_app = _app_control(dep, say)
    s3 = dep.s3 if the_plan.objects is not None else None
    pg = database(dep) if the_plan.database is not None else None
    res = execute_restore(cat, entry, the_plan, pg=pg, s3=s3, jobs=jobs(dep, requested_jobs),
                          backup_key=backup_key(dep, required=False), stop_app=stop_app, start_app=start_app, phase=say)
    return {"backup": entry.id, **res.to_dict()}


def restore(dep: Deployment, backup_id: str = "latest", req: RestoreRequest = RestoreRequest(),
            say: Say = lambda _m: None) -> dict:
    """Plan and carry out a restore in one go (playbooks, ``rollback --restore-db``)."""
    cat = catalog(dep)
    with cat.fetch(cat.get(backup_id or "latest")) as entry:
        p = plan(dep, entry, req)
        for i, s in enumerate(p.steps, 1):
            say(f"restore plan {i}. {s}")
        return execute(dep, cat, entry, p, say=say)


def _runs_on(dep: Deployment, pg: PgTarget) -> bool:
    """Whether the stack's app uses ``pg`` (its env files' DATABASE_URL names the same server and database)."""
    for env in dep.envs.values():
        url = env.get("DATABASE_URL")
        if url:
            try:
                app = parse_database_url(url)
            except UsageError:
                continue
            if (app.host, app.port, app.database) == (pg.host, pg.port, pg.database):
                return True
    return False


def _app_control(dep: Deployment, say: Say):
    """Callbacks that stop the stack's api and worker for a live restore of the database they use (embedded or
    external) and start them again once it is done; nothing to stop for another database."""
    if dep.admin_database.source != EMBEDDED_ADMIN and not _runs_on(dep, database(dep)):
        return None, None
    from aixsss_ops.runtime.base import is_app
    from aixsss_ops.stack.engines import open_stack

    stack = open_stack(dep)

    def stop() -> list[tuple[str, str | None]]:
        units = [(u.service, u.color) for u in stack.runtime.status()
                 if is_app(u.service) and u.state in ("RUNNING", "STARTING")]
        for service, color in units:
            stack.runtime.stop(service, color)
        return units

    def start(units: list[tuple[str, str | None]]) -> None:
        for service, color in units:
            stack.runtime.start(service, color)
        wanted = set(units)
        defs = [d for c in {c for _s, c in units} for d in stack.app_defs(c) if (d.service, d.color) in wanted]
        stack.wait_ready(defs, say)  # return only once the app serves again

    return stop, start
