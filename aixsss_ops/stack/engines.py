"""``open_stack``: the embedded stack on the engine ops.toml names (``runtime = "local" | "docker" | "swarm"``)."""

from __future__ import annotations

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.stack.manager import Stack


def open_stack(where: Deployment | OpsConfig) -> Stack:
    dep = where if isinstance(where, Deployment) else Deployment(where)
    if dep.cfg.runtime == "swarm":
        from aixsss_ops.stack.swarm_stack import SwarmStack

        return SwarmStack(dep)
    if dep.cfg.runtime == "docker":
        from aixsss_ops.stack.docker_stack import DockerStack

        return DockerStack(dep)
    from aixsss_ops.stack.local_stack import LocalStack

    return LocalStack(dep)
