"""The provider-key encryption key of a deployment: check and rotate (``keys …`` commands and playbook actions).
A full rotation restarts the app blue/green through ``usecases.deploy``."""

from __future__ import annotations

from collections.abc import Callable

from aixsss_ops import appspec, releases
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import CheckFailed, OpsError
from aixsss_ops.keys import service
from aixsss_ops.keys.rotate import Rotation, RotationResult
from aixsss_ops.stack.engines import open_stack
from aixsss_ops.usecases.deploy import deployer

Say = Callable[[str], None]


def _running_live(stack) -> str | None:
    """The live color when its api is running (the rotation restarts it then), else None."""
    try:
        live = stack.live_color()
        return live if live and stack.runtime.state("api", live) == "RUNNING" else None
    except OpsError:
        return None


def restart_preflight(dep: Deployment) -> None:
    """What would refuse the rotation's restart (step 6), checked before its step 1 so that the refusal changes
    nothing: the redeploy of the live release needs the deploy lock (held now by another deploy, rollback or
    rotation: refused rather than waited for), env files its contracts accept (step 5 changes only the key in them),
    and migrations the ledger accepts (a migration recorded as failed or still being applied, drift): the checks
    ``restart_app``'s deploy makes. Its pre-deploy hooks run only then."""
    from aixsss_ops.deploy.lock import describe
    from aixsss_ops.migrate import deploy as migrate_deploy

    stack = open_stack(dep)
    live = _running_live(stack)
    spec = stack.colors().spec(live) if live else None
    if spec is None:  # nothing to restart: the services read the new key when they start
        return
    restart = "the rotation ends with a blue/green restart of the live release"
    d = deployer(dep)
    lock = d.lock.info()
    if lock.held:
        raise CheckFailed(f"{restart}, and another operation holds the deploy lock: {describe(lock.holder)}",
                          hint="nothing was changed; rerun `aixsss-ops keys rotate` when it is done "
                               "(`aixsss-ops deploy lock status`)")
    try:
        d.validate_env()
    except CheckFailed as e:
        raise CheckFailed(f"{restart}, whose env files the contracts refuse: {e.message}",
                          hint="nothing was changed; fix the env files (`aixsss-ops env validate`), then rerun "
                               "`aixsss-ops keys rotate`", details=e.details) from None
    release = releases.find(stack.layout.releases, spec.release)
    plan = migrate_deploy(stack.app_database_url(), appspec.migrations_dir(dep.cfg, release.path), dry_run=True)
    if plan.blockers:
        raise CheckFailed(
            f"the rotation ends with a blue/green restart of release {release.id}, which the migrations would refuse: "
            f"{plan.blockers[0]}",
            hint="nothing was changed; fix the migrations first (`aixsss-ops migrate status`), then rerun "
                 "`aixsss-ops keys rotate`",
            details="\n".join(plan.blockers[1:]) or None)


def restart_app(dep: Deployment, say: Say) -> dict:
    """Blue/green restart of the live release (the api keeps serving), then stop the old color's api: it still
    holds the old key, so it must neither write again nor be the target of a warm rollback."""
    stack = open_stack(dep)
    live = _running_live(stack)
    running = live is not None
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
    return service.prepare(dep, opts, say=say, progress=progress, restart=lambda s: restart_app(dep, s),
                           preflight=lambda: restart_preflight(dep))


def rotate(rot: Rotation) -> RotationResult:
    """Run a prepared rotation (or only revert the unfinished one it found)."""
    res = rot.abort() if rot.revert_only else rot.run()
    res.next_steps = service.next_steps(rot) if res.phase == "db-done" else []
    return res
