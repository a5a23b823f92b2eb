"""What each Swarm service of the swarm runtime is, made from the docker runtime's container specs.

A container spec (runtime/docker_specs.py) says what runs; this module adds what Swarm needs around it: the
replicas, where they may run (placement constraints), the overlay network and the name the other services reach
it by (an alias, resolved round-robin to its tasks: ``endpoint_mode`` dnsrr, since this engine has no IPVS for
virtual IPs), its ports published in host mode on the node that runs it, and its secret files as Swarm secrets.
The result is the keyword arguments of the SDK's ``services.create``: plain data, so a test can read it.
"""

from __future__ import annotations

import dataclasses

from aixsss_ops import appspec
from aixsss_ops.config import OpsConfig
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_RELEASE, L_SERVICE, L_SPEC, L_VERSION

SECOND = 1_000_000_000  # the Engine API counts durations in nanoseconds
APP_HEALTH_INTERVAL_S = 1  # how often a replica's readiness is asked (its task is "starting" until it passes)


@dataclasses.dataclass(frozen=True)
class SecretRef:
    """A Swarm secret mounted as the file ``target`` under /run/secrets of the service's containers."""

    name: str  # the secret's name in the swarm (content-addressed: secrets are immutable)
    target: str
    uid: int
    gid: int


def service_name(cfg: OpsConfig, unit: str) -> str:
    return specs.container_name(cfg, unit)


def replicas(cfg: OpsConfig, role: str) -> int:
    """Replicas per color of a process: ``swarm.replicas``, else the process's ``count``."""
    spec = appspec.spec_of(cfg, role)
    return cfg.swarm.replicas.get(role, spec.count if spec else 1)


def app_processes(cfg: OpsConfig, color: str, release: str, version: str, image: str) -> list[specs.ContainerSpec]:
    """One container spec per process of the description (a role's replicas run the same spec). The api is
    reached over the overlay network by its alias ``api-<color>`` on PORTS["api"]: no unix socket (the proxy may
    run on another node), no port published on a node."""
    out = []
    for role in appspec.roles(cfg):
        spec = specs.app_process(cfg, role, color, release, version, image, network_only=True)
        out.append(spec)
    return out


def infra(cfg: OpsConfig) -> list[specs.ContainerSpec]:
    """postgres, redis and s3 as on the docker runtime (those not external); the proxy forwards to the api over the
    network."""
    return [*specs.embedded_infra(cfg), specs.proxy(cfg, network_api=True)]


def labels(cfg: OpsConfig, spec: specs.ContainerSpec, digest: str) -> dict[str, str]:
    return {
        L_PROJECT: cfg.project,
        L_SERVICE: spec.service,
        L_SPEC: digest,
        **({L_COLOR: spec.color} if spec.color else {}),
        **({L_RELEASE: spec.release, L_VERSION: spec.version or ""} if spec.release else {}),
    }


def constraints(cfg: OpsConfig, spec: specs.ContainerSpec, infra_node: str) -> list[str]:
    if spec.color is None:
        return list(cfg.swarm.proxy_constraints) if spec.service == "proxy" else [f"node.hostname=={infra_node}"]
    if spec.service == appspec.API:
        return list(cfg.swarm.api_constraints)
    return list(cfg.swarm.worker_constraints)


def volume(cfg: OpsConfig, key: str, target: str):
    """A named volume of the project, created on whichever node first runs a task that mounts it."""
    from docker import types

    return types.Mount(target, specs.volume_name(cfg, key), type="volume", labels={L_PROJECT: cfg.project})


def _bytes(size: str) -> int:
    from docker.utils import parse_bytes

    return int(parse_bytes(size))


def service_kwargs(cfg: OpsConfig, spec: specs.ContainerSpec, *, image: str, digest: str, infra_node: str,
                   secrets: list[SecretRef], count: int) -> dict:
    """The ``services.create`` arguments of ``spec``: ``count`` replicas (the proxy is global: one per node its
    constraints allow), ``image`` as the nodes pull it."""
    from docker import types

    health = None
    if spec.healthcheck:
        interval = APP_HEALTH_INTERVAL_S if spec.color else 5
        health = types.Healthcheck(test=spec.healthcheck, interval=interval * SECOND, timeout=3 * SECOND,
                                   retries=3, start_period=(30 if spec.color else 10) * SECOND)
    resources = None
    if spec.memory or spec.cpus:
        resources = types.Resources(mem_limit=_bytes(spec.memory) if spec.memory else None,
                                    cpu_limit=int(spec.cpus * 1e9) if spec.cpus else None)
    ports = {hp: (cp, "tcp", "host") for _ip, hp, cp in spec.ports}
    global_ = spec.service == "proxy"
    return {
        "image": image,
        "command": spec.command,
        "name": service_name(cfg, spec.unit),
        "labels": labels(cfg, spec, digest),
        "container_labels": {L_PROJECT: cfg.project, L_SERVICE: spec.service,
                             **({L_COLOR: spec.color} if spec.color else {})},
        "env": [f"{k}={v}" for k, v in spec.environment.items()],
        "user": spec.user or None,
        "workdir": spec.working_dir,
        "hostname": spec.unit,
        "mounts": [volume(cfg, key, target) for key, target in spec.volumes.items()],
        "secrets": [types.SecretReference(secret_id="", secret_name=s.name, filename=s.target, uid=str(s.uid),
                                          gid=str(s.gid), mode=0o400) for s in secrets],
        "networks": [types.NetworkAttachmentConfig(specs.network_name(cfg), aliases=[spec.unit])],
        "endpoint_spec": types.EndpointSpec(mode="dnsrr", ports=ports or None),
        "mode": types.ServiceMode("global") if global_ else types.ServiceMode("replicated", replicas=count),
        "constraints": constraints(cfg, spec, infra_node),
        "resources": resources,
        "restart_policy": types.RestartPolicy(condition="any", delay=SECOND, max_attempts=0),
        "healthcheck": health,
        "stop_grace_period": spec.stop_timeout * SECOND,
        "stop_signal": spec.stop_signal,
        **({"init": True} if spec.init else {}),
    }
