"""Prisma-compatible migrations: the Prisma folder layout, the ``_prisma_migrations`` ledger,
Prisma's advisory lock, blue/green lint. ``deploy`` is what ``stack up`` calls."""

from aixsss_ops.migrate.deploy import DeployResult, deploy
from aixsss_ops.migrate.resolve import ResolveResult, baseline, resolve_applied, resolve_rolled_back
from aixsss_ops.migrate.status import StatusReport, status

__all__ = [
    "DeployResult", "ResolveResult", "StatusReport", "baseline", "deploy", "resolve_applied", "resolve_rolled_back",
    "status",
]
