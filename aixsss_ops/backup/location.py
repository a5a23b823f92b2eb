"""Where a deployment's backups are kept: ``backup.dir``, or (``destination = "s3"``) a bucket staged through it."""

from __future__ import annotations

from aixsss_ops.backup.catalog import Catalog
from aixsss_ops.backup.create import cores
from aixsss_ops.backup.s3catalog import S3Catalog
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import ConfigError
from aixsss_ops.output import scrubber
from aixsss_ops.s3 import S3Target


def catalog(dep: Deployment) -> Catalog | S3Catalog:
    """The backup catalogue: ``backup.dir``, or (``destination = "s3"``) a bucket staged through ``backup.dir``."""
    cfg, b = dep.cfg, dep.cfg.backup
    if b.destination != "s3":
        return Catalog(cfg.backup_dir)
    app_target = dep.s3
    if b.s3_bucket in {cfg.s3.bucket, dep.bucket} and (not b.s3_endpoint or b.s3_endpoint == app_target.endpoint):
        raise ConfigError(f"backup.s3_bucket = '{b.s3_bucket}' is the app's own bucket: backups must go to another "
                          "bucket (a backup stored beside the data it protects dies with it)")
    target = app_target
    if b.s3_endpoint or b.s3_access_key:
        secret = b.s3_secret_key.get_secret_value()
        target = S3Target(b.s3_endpoint or app_target.endpoint, b.s3_access_key or app_target.access_key,
                          secret if b.s3_access_key else app_target.secret_key, app_target.region)
        scrubber.add(target.secret_key)
    return S3Catalog(target, b.s3_bucket, b.s3_prefix, cfg.backup_dir, jobs=max(4, jobs(dep)))


def jobs(dep: Deployment, requested: int | None = None) -> int:
    return requested or dep.cfg.backup.jobs or cores()
