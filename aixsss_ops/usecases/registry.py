"""The swarm's image registry: ``images push`` (a release's app image, or any image, into the registry the nodes
pull from; the embedded registry is started or repaired first)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from aixsss_ops.context.deployment import Deployment
from aixsss_ops.errors import UsageError
from aixsss_ops.runtime import swarm_registry
from aixsss_ops.runtime.docker_engine import connect
from aixsss_ops.runtime.docker_images import app_tag, image_exists

Say = Callable[[str], None]
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # what a release id must be to tag an app image


def _exists(client, image: str) -> bool:
    import docker

    try:
        return image_exists(client, image)
    except docker.errors.APIError as e:
        if e.status_code == 400:  # not a valid reference: no such image
            return False
        raise


def resolve_image(dep: Deployment, client, target: str | None) -> tuple[str, str | None]:
    """(image, release id or None) for ``target``: the live release's app image when None, else a release id (its
    app image), else an image on the engine."""
    cfg = dep.cfg
    if target is None:
        colors = dep.deploy_state.load()
        spec = colors.spec(colors.active) if colors else None
        if spec is None:
            raise UsageError("no release is live: name the release or the image to push",
                             hint="aixsss-ops images push RELEASE|IMAGE (aixsss-ops deploy releases lists releases)")
        target = spec.release
        if not _exists(client, app_tag(cfg, target)):
            raise UsageError(f"the live release {target} has no app image on this engine",
                             hint="build it: aixsss-ops images app")
        return app_tag(cfg, target), target
    if _TAG.fullmatch(target) and _exists(client, app_tag(cfg, target)):
        return app_tag(cfg, target), target
    if _exists(client, target):
        return target, None
    if (dep.layout.releases / target).is_dir():
        raise UsageError(f"release {target} has no app image on this engine", hint="build it: aixsss-ops images app")
    raise UsageError(f"{target} is neither a release with an app image nor an image on the engine",
                     hint="aixsss-ops deploy releases lists the releases; docker image ls the images")


def push(dep: Deployment, target: str | None = None, say: Say = lambda _m: None) -> dict:
    """Push ``target`` (see ``resolve_image``) into the registry the nodes pull from; for the embedded registry,
    ensure it first (its bucket, its secret, the global service answering on every node)."""
    cfg = dep.cfg
    client = connect(cfg)
    image, release = resolve_image(dep, client, target)
    t0 = time.monotonic()
    registry: dict = {}
    if cfg.swarm.registry == "embedded":
        s3 = dep.s3
        embedded = s3.endpoint.rstrip("/") == f"http://{cfg.host}:{cfg.ports.s3}"  # else a managed store: the
        # replicas reach it at the same address
        registry = swarm_registry.ensure_registry(client, cfg, say, s3=s3,
                                                  endpoint=swarm_registry.S3_ENDPOINT if embedded else s3.endpoint)
    t1 = time.monotonic()
    ref = swarm_registry.push(client, cfg, image, say)
    return {
        "image": image,
        "release": release,
        "reference": ref,
        "digest": ref.rpartition("@")[2] if "@" in ref else None,
        "registry": swarm_registry.registry_address(cfg) or "none",
        "registry_service": registry.get("service"),
        "registry_action": registry.get("action"),
        "push_seconds": round(time.monotonic() - t1, 1),
        "seconds": round(time.monotonic() - t0, 1),
    }
