"""Every doctor check, in the order the report lists them, with the dependency it needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aixsss_ops.doctor import checks as c
from aixsss_ops.doctor import pitr_checks as pitr
from aixsss_ops.doctor import swarm_checks as swarm


@dataclass(frozen=True)
class Check:
    name: str
    fn: Callable
    needs: str | None = None  # the name of a reachability check; skipped when that one failed
    emits: tuple[str, ...] = ()  # the other names its findings carry (doctor prints them): ``--only``/``--skip``
    # take them too, for this check

    @property
    def group(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def names(self) -> tuple[str, ...]:
        """Every name that selects it: its own, the names of its findings, and their groups."""
        own = (self.name, *self.emits)
        return (*own, *dict.fromkeys(n.split(".", 1)[0] for n in own))


CHECKS: tuple[Check, ...] = (
    Check("env", c.env_rules, emits=("env.contract", "env.database-url", "env.file", "env.localhost", "env.shared",
                                     "env.queue", "prod.cors", "prod.default-secret", "prod.key-fallback", "prod.tls",
                                     "prod.weak-secret")),
    Check("config.clock-skew", c.clock_skew, "postgres.reachable"),
    Check("postgres.reachable", c.postgres_reachable),
    Check("postgres.migrations", c.migrations, "postgres.reachable"),
    Check("postgres.connections", c.postgres_connections, "postgres.reachable"),
    Check("keys.decrypt", c.provider_keys, "postgres.reachable"),
    Check("redis.reachable", c.redis_reachable),
    Check("redis.maxmemory-policy", c.redis_policy, "redis.reachable"),
    Check("redis.persistence", c.redis_persistence, "redis.reachable"),
    Check("redis.memory", c.redis_memory, "redis.reachable"),
    Check("queue.name-match", c.queue_name_match),
    Check("queue.jobs", c.queue_jobs, "redis.reachable", emits=("queue.workers",)),
    Check("s3.reachable", c.s3_reachable),
    Check("s3.bucket", c.s3_bucket, "s3.reachable"),
    Check("s3.versioning", c.s3_versioning, "s3.reachable"),
    Check("s3.lifecycle", c.s3_lifecycle, "s3.reachable"),
    Check("backup.newest", c.backup_newest),
    Check("backup.verified", c.backup_verified),
    Check("backup.scratch", c.backup_scratch, "postgres.reachable"),
    Check("backup.pitr-archiving", pitr.archiving, "postgres.reachable"),  # the pitr checks: none when it is off
    Check("backup.pitr-wal", pitr.wal_age),
    Check("backup.pitr-base", pitr.base_backup),
    Check("backup.pitr-lifecycle", pitr.lifecycle_and_space, "s3.reachable", emits=("backup.pitr-space",)),
    Check("backup.pitr-restore", pitr.interrupted_restore),
    Check("deploy.active", c.deploy_proxy),
    Check("deploy.state", c.deploy_state,
          emits=("deploy.idle-color", "deploy.interrupted", "deploy.consistent", "deploy.lock")),
    Check("deploy.proxy-config", c.proxy_config),
    Check("deploy.api-bind", c.api_bind),
    Check("swarm.engine", swarm.engine),  # the swarm checks: none unless runtime = "swarm"
    Check("swarm.nodes", swarm.nodes, "swarm.engine"),
    Check("swarm.quorum", swarm.quorum, "swarm.engine"),
    Check("swarm.replicas", swarm.replicas, "swarm.engine"),
    Check("host.disk", c.host_disk, emits=("host.disk-state", "host.disk-backup")),
)


def select(only: list[str] | None = None, skip: list[str] | None = None) -> list[Check]:
    """``--only``/``--skip`` take check names (``redis.memory``), the names of their findings (``deploy.lock``: the
    check that reports it) or groups (``redis``)."""
    from aixsss_ops.errors import UsageError

    names = {n for ch in CHECKS for n in ch.names}
    unknown = sorted({n for n in (only or []) + (skip or []) if n not in names})
    if unknown:
        raise UsageError(f"unknown check(s): {', '.join(unknown)}",
                         hint="one of: " + ", ".join(sorted(names)))

    def hit(ch: Check, wanted: list[str]) -> bool:
        return any(n in wanted for n in ch.names)

    return [ch for ch in CHECKS if (not only or hit(ch, only)) and not (skip and hit(ch, skip))]
