"""Deploys of a deployment: the ``Deployer`` on its stack, with its backups taken and restored by
``usecases.backup`` (``deploy``, ``rollback``, ``switch``, the playbooks and the key rotation's restart use it)."""

from __future__ import annotations

from collections.abc import Callable

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.deploy.engine import Deployer
from aixsss_ops.stack.engines import open_stack

Say = Callable[[str], None]


def deployer(dep: Deployment, say: Say = lambda _m: None) -> Deployer:
    """The Deployer on the deployment's stack; the backup use cases are imported only when a backup is taken or
    restored (a rollback's start-up stays light)."""

    def take_backup(label: str) -> str:
        from aixsss_ops.backup.create import Reporter
        from aixsss_ops.usecases import backup

        class Phases(Reporter):
            def phase(self, message: str) -> None:
                say(f"backup: {message}")

            def warn(self, message: str) -> None:
                say(f"backup warning: {message}")

        return backup.create(dep, label=label, reporter=Phases()).id

    def restore_db(backup_id: str) -> str:
        from aixsss_ops.usecases import backup

        return backup.restore(dep, backup_id, backup.RestoreRequest(db_only=True), say)["backup"]

    return Deployer(open_stack(dep), say, backup=take_backup, restore_db=restore_db)


def live(dep: Deployment) -> dict:
    """The live color and its release."""
    stack = open_stack(dep)
    state = stack.colors()
    color = stack.live_color() or state.active
    spec = state.spec(color)
    return {"color": color, "release": spec.release if spec else None, "version": spec.version if spec else None}
