"""The connection to a Docker engine: DOCKER_HOST passthrough, a timeout on every call, one clear error."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from aixsss_ops.errors import ServiceUnavailable

if TYPE_CHECKING:
    import docker

    from aixsss_ops.config import OpsConfig

DEFAULT_HOST = "unix:///var/run/docker.sock"

LABEL = "io.aixsss"
L_PROJECT, L_SERVICE, L_COLOR, L_RELEASE, L_VERSION, L_SPEC = (
    f"{LABEL}.{k}" for k in ("project", "service", "color", "release", "version", "spec")
)


def engine_host(cfg: OpsConfig) -> str:
    """Where the engine is: docker.host in ops.toml, else $DOCKER_HOST, else the local socket."""
    return cfg.docker.host or os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def unreachable(cfg: OpsConfig, err: BaseException) -> ServiceUnavailable:
    host = engine_host(cfg)
    env = "DOCKER_HOST" if os.environ.get("DOCKER_HOST") else "default"
    source = "docker.host in ops.toml" if cfg.docker.host else env
    reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    return ServiceUnavailable(
        f"Docker engine at {host} is unreachable (DOCKER_HOST={host}, from {source}): {reason}",
        hint="start dockerd, or point DOCKER_HOST (or docker.host in ops.toml) at a running engine",
    )


def connect(cfg: OpsConfig) -> docker.DockerClient:
    """A client that answered (the SDK asks the engine its API version when it connects: that call is the
    reachability check, no extra ping); every later call is bounded by ``docker.timeout``."""
    import docker
    import requests

    host = engine_host(cfg)
    try:
        if cfg.docker.host:
            client = docker.DockerClient(base_url=host, version="auto", timeout=int(cfg.docker.timeout))
        else:
            client = docker.from_env(version="auto", timeout=int(cfg.docker.timeout))
    except (docker.errors.DockerException, requests.RequestException, OSError) as e:
        raise unreachable(cfg, e) from None
    return client
