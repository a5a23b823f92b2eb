"""Where a backup reads from and writes to, resolved from the configuration.

Connection precedence: an explicit URL, then the process environment (``DATABASE_URL``, ``S3_*``,
``API_KEY_ENCRYPTION_KEY``) as CI sets it, then the services' env files, then the embedded stack.
"""

from __future__ import annotations

import os
from contextlib import suppress
from urllib.parse import urlsplit

from aixsss_ops import envfile
from aixsss_ops.backup.catalog import Catalog
from aixsss_ops.backup.create import CreateOptions, CreateResult, Reporter, cores, create_backup
from aixsss_ops.backup.prune import Policy
from aixsss_ops.backup.s3catalog import S3Catalog
from aixsss_ops.config import OpsConfig
from aixsss_ops.dburl import PgTarget, parse_database_url
from aixsss_ops.errors import ConfigError, UsageError
from aixsss_ops.output import scrubber
from aixsss_ops.s3 import S3Target


def catalog(cfg: OpsConfig) -> Catalog | S3Catalog:
    """The backup catalogue: ``backup.dir``, or (``destination = "s3"``) a bucket staged through ``backup.dir``."""
    b = cfg.backup
    if b.destination != "s3":
        return Catalog(cfg.backup_dir)
    app_target, app_bucket = objects(cfg)
    if b.s3_bucket in {cfg.s3.bucket, app_bucket} and (not b.s3_endpoint or b.s3_endpoint == app_target.endpoint):
        raise ConfigError(f"backup.s3_bucket = '{b.s3_bucket}' is the app's own bucket: backups must go to another "
                          "bucket (a backup stored beside the data it protects dies with it)")
    target = app_target
    if b.s3_endpoint or b.s3_access_key:
        secret = b.s3_secret_key.get_secret_value()
        target = S3Target(b.s3_endpoint or app_target.endpoint, b.s3_access_key or app_target.access_key,
                          secret if b.s3_access_key else app_target.secret_key, app_target.region)
        scrubber.add(target.secret_key)
    return S3Catalog(target, b.s3_bucket, b.s3_prefix, cfg.backup_dir, jobs=max(4, jobs(cfg)))


def jobs(cfg: OpsConfig, requested: int | None = None) -> int:
    return requested or cfg.backup.jobs or cores()


def _stack(cfg: OpsConfig):
    from aixsss_ops.stack.manager import Stack

    return Stack(cfg)


def database(cfg: OpsConfig, url: str | None = None) -> PgTarget:
    url = url or os.environ.get("DATABASE_URL")
    if not url:
        stack = _stack(cfg)
        if not stack.layout.secrets_file.exists():  # no embedded stack here: do not invent its secrets
            raise UsageError("no database: pass --database-url, set DATABASE_URL, or run `aixsss-ops stack up`")
        url = stack.admin_url(cfg.postgres.database)
    with suppress(ValueError):
        scrubber.add(urlsplit(url).password)
    return parse_database_url(url)


def objects(cfg: OpsConfig, wanted: bool = True) -> tuple[S3Target | None, str | None]:
    if not wanted:
        return None, None
    env = os.environ
    if env.get("S3_ENDPOINT"):
        t = S3Target(env["S3_ENDPOINT"], env.get("S3_ACCESS_KEY", ""), env.get("S3_SECRET_KEY", ""),
                     env.get("S3_REGION", cfg.s3.region))
        bucket = env.get("S3_BUCKET") or cfg.s3.bucket
    else:
        t, bucket = _stack(cfg).s3_target(), cfg.s3.bucket
    scrubber.add(t.secret_key)
    return t, bucket


def _api_env(cfg: OpsConfig) -> dict[str, str]:
    path = cfg.state / "env" / "api.env"
    return envfile.read(path) if path.exists() else {}


def api_key(cfg: OpsConfig, name: str = "API_KEY_ENCRYPTION_KEY") -> tuple[bytes | None, str | None]:
    """The derived provider-key encryption key in force (from the environment, else the api env file)."""
    from aixsss_ops.crypto import derive_key

    raw, source = os.environ.get(name), f"${name}"
    if not raw:
        raw, source = _api_env(cfg).get(name), f"{name} in {cfg.state / 'env' / 'api.env'}"
    if not raw:
        return None, None
    scrubber.add(raw)
    return derive_key(raw), source


def backup_key(cfg: OpsConfig, required: bool) -> bytes | None:
    from aixsss_ops.backup.crypt import load_key

    name = cfg.backup.encryption_key_env
    raw = os.environ.get(name)
    if not raw and not required:
        return None
    scrubber.add(raw)
    return load_key(raw, f"${name}")


def app_info(cfg: OpsConfig) -> dict:
    info = {"version": cfg.app.version, "active_color": None}
    with suppress(Exception):
        colors = _stack(cfg).colors()
        active = colors.get("active")
        info = {"active_color": active, "version": colors["colors"].get(active, {}).get("version")}
    return info


def create(cfg: OpsConfig, *, label: str | None = None, keep: bool = False, requested_jobs: int | None = None,
           database_url: str | None = None, with_objects: bool = True, encrypt: bool | None = None,
           reporter: Reporter | None = None) -> CreateResult:
    """One restore point of the configured deployment (what ``backup create`` and a pre-deploy backup take)."""
    b = cfg.backup
    pg = database(cfg, database_url)
    s3, bucket = objects(cfg, with_objects)
    do_encrypt = b.encrypt if encrypt is None else encrypt
    key = backup_key(cfg, required=do_encrypt)  # also signs the manifest when set without encryption
    opts = CreateOptions(
        label=label, jobs=jobs(cfg, requested_jobs), compression=b.compression,
        encryption_key=key if do_encrypt else None, signing_key=key, api_key=api_key(cfg)[0],
        app=app_info(cfg), keep=keep, retention_days=Policy(b.keep_last, b.keep_daily, b.keep_weekly).horizon_days,
        noncurrent_version_days=b.noncurrent_version_days,
    )
    return create_backup(catalog(cfg), pg, s3, bucket, opts, reporter or Reporter())


def app_control(cfg: OpsConfig, external: bool, say=lambda _m: None):
    """Callbacks that stop the api and worker for a live restore and start them again once it is done.

    ``external``: the database is not the embedded stack's (a URL was given), so there is nothing to stop."""
    if external:
        return (lambda: []), (lambda _units: None)
    stack = _stack(cfg)

    def stop() -> list[tuple[str, str | None]]:
        units = [(u.service, u.color) for u in stack.runtime.status()
                 if u.service in ("api", "worker") and u.state in ("RUNNING", "STARTING")]
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


def restore(cfg: OpsConfig, backup_id: str = "latest", *, target_db: str | None = None, db_only: bool = False,
            force: bool = False, say=lambda _m: None) -> dict:
    """Restore a backup of the configured deployment: the live database (api and worker stopped meanwhile, the old
    database kept) and, unless ``db_only`` or ``target_db``, the objects. Used by playbooks and ``rollback``."""
    cat = catalog(cfg)
    with cat.fetch(cat.get(backup_id or "latest")) as entry:
        return _restore(cfg, cat, entry, target_db=target_db, db_only=db_only, force=force, say=say)


def _restore(cfg: OpsConfig, cat, entry, *, target_db: str | None, db_only: bool, force: bool, say) -> dict:
    from aixsss_ops.backup.restore import execute_restore, plan_restore

    objs = not db_only and not target_db and entry.manifest.get("objects") is not None
    pg = database(cfg)
    s3 = objects(cfg)[0] if objs else None
    bkey = backup_key(cfg, required=False)  # decrypts an encrypted backup; checks a signed manifest
    current, _ = api_key(cfg)
    old, old_source = api_key(cfg, "API_KEY_ENCRYPTION_KEY_PREVIOUS")
    plan = plan_restore(entry, pg=pg, s3=s3, db=True, objs=objs, target_db=target_db or None,
                        migrations_dir=cfg.app_source / "migrations", force=force, backup_key=bkey,
                        backup_key_env=cfg.backup.encryption_key_env, current_api_key=current, old_api_key=old,
                        old_api_key_source=old_source, env_hint=str(cfg.state / "env" / "api.env"))
    for i, s in enumerate(plan.steps, 1):
        say(f"restore plan {i}. {s}")
    stop_app, start_app = app_control(cfg, bool(os.environ.get("DATABASE_URL")), say)
    res = execute_restore(cat, entry, plan, pg=pg, s3=s3, jobs=jobs(cfg), backup_key=bkey, stop_app=stop_app,
                          start_app=start_app, phase=say)
    return {"backup": entry.id, **res.to_dict()}
