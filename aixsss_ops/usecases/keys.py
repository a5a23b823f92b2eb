"""The provider-key encryption key of a deployment: check and rotate (``keys …`` commands and playbook actions).
A full rotation restarts the app blue/green through ``usecases.deploy``."""

from __future__ import annotations

from collections.abc import Callable

from aixsss_ops import appspec
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import OpsError
from aixsss_ops.keys import service
from aixsss_ops.keys.rotate import Rotation, RotationResult
from aixsss_ops.stack.engines import open_stack
from aixsss_ops.usecases.deploy import deployer

Say = Callable[[str], None]


def restart_app(dep: Deployment, say: Say) -> dict:
    """Blue/green restart of the live release (the api keeps serving), then stop the old color's api: it still
    holds the old key, so it must neither write again nor be the target of a warm rollback."""
    stack = open_stack(dep)
    try:
        live = stack.live_color()
        running = bool(live) and stack.runtime.state("api", live) == "RUNNING"
    except OpsError:
        live, running = None, False
    if not running:
        return {"restarted": False,
                "note": "the embedded stack's api is not running: api and worker read the new key when they start"}
    spec = stack.colors().spec(live)
    res = deployer(dep, say).deploy(release_id=spec.release, force=True, actor="keys rotate")
    old = res.previous_color
    say(f"stopping {old}: its processes still hold the old key")
    for role in (*appspec.others(dep.cfg), appspec.API):
        stack.runtime.stop(role, old)
    return {"restarted": True, "color": res.color, "previous_color": old, "release": res.release,
            "switch_seconds": res.switch_seconds}


def prepare_rotation(dep: Deployment, opts: service.RotateOptions, *, say: Say | None = None,
                     progress=None) -> Rotation:
    return service.prepare(dep, opts, say=say, progress=progress, restart=lambda s: restart_app(dep, s))


def rotate(rot: Rotation) -> RotationResult:
    """Run a prepared rotation (or only revert the unfinished one it found)."""
    res = rot.abort() if rot.revert_only else rot.run()
    res.next_steps = service.next_steps(rot) if res.phase == "db-done" else []
    return res
