"""The image registry the swarm's nodes pull app images from (``[swarm] registry``).

``embedded`` (the default) runs Debian's ``docker-registry`` (distribution 2.8, in the project's base image) as
the global service ``<project>-registry`` on the project's overlay network, its port published in host mode on
every node: each node's engine pulls from its own replica at ``127.0.0.1:<registry_port>`` (the engine allows
plain HTTP to 127.0.0.0/8 without daemon configuration). Every replica keeps its blobs in the bucket
``<project>-registry`` of the project's object store (the S3 driver, path style, through ``http://s3:8333`` inside
the overlay), so an image pushed through one node's replica is pulled on every node.

The registry's configuration carries the S3 credentials: it is a Swarm secret (immutable, so named by a keyed digest
of its content), mounted 0400 at /run/secrets/registry.yml and named on the command line; the service spec holds
no credential. ``<host:port>`` names the operator's own registry (nothing is run); ``none`` keeps images on the
manager's engine (a one-node swarm).

Every replica is also reachable from the nodes' networks on that port (Swarm publishes host-mode ports on every
address): keep it behind the cluster's firewall, as Swarm's own ports.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aixsss_ops.errors import ServiceUnavailable, UsageError
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.docker_engine import L_PROJECT, L_SERVICE, L_SPEC, engine_host, unreachable

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig
    from aixsss_ops.s3 import S3Target

Say = Callable[[str], None]

SERVICE = "registry"
CONTAINER_PORT = 5000  # where docker-registry listens inside its container
S3_ENDPOINT = f"http://s3:{specs.PORTS['s3']}"  # the project's object store, inside the overlay network
SECRET_FILE = "registry.yml"  # under /run/secrets
CONFIG_PATH = f"{specs.SECRETS}/{SECRET_FILE}"
RUN_AS = "65534"  # nobody:nogroup: with S3 storage the registry writes no file
HEALTH = ["CMD", "python3", "-c", "import urllib.request as u; "
          f"u.urlopen('http://127.0.0.1:{CONTAINER_PORT}/v2/', timeout=3)"]
_FATAL_TASK_ERRORS = ("No such image", "pull access denied", "manifest unknown", "repository does not exist")


# --- names and references -------------------------------------------------------------------------------------

def service_name(cfg: OpsConfig) -> str:
    return f"{cfg.project}-{SERVICE}"


def bucket_name(cfg: OpsConfig) -> str:
    return f"{cfg.project}-registry"


def registry_address(cfg: OpsConfig) -> str | None:
    """host:port the nodes pull from; None when images are not distributed (``registry = "none"``)."""
    reg = cfg.swarm.registry
    if reg == "none":
        return None
    if reg == "embedded":
        return f"127.0.0.1:{cfg.swarm.registry_port}"
    return reg


def _split(image: str) -> tuple[str, str]:
    """(repository without a registry host, tag) of ``image`` (``latest`` when it has none; a digest is dropped)."""
    name = image.split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    repo, tag = (name[:colon], name[colon + 1:]) if colon > slash else (name, "latest")
    first, sep, rest = repo.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        repo = rest  # another registry's host: the repository keeps its path
    return repo, tag


def image_ref(cfg: OpsConfig, image: str) -> str:
    """What the nodes pull for ``image``: ``127.0.0.1:<port>/<repo>:<tag>`` (embedded), ``<host:port>/<repo>:<tag>``
    (the operator's registry), or ``image`` itself (``none``)."""
    addr = registry_address(cfg)
    if addr is None:
        return image
    repo, tag = _split(image)
    return f"{addr}/{repo}:{tag}"


# --- the registry's configuration (a secret) ------------------------------------------------------------------

def _q(value: str) -> str:
    return json.dumps(value)  # a JSON string is a YAML double-quoted scalar


def registry_config(cfg: OpsConfig, access_key: str, secret_key: str, endpoint: str = S3_ENDPOINT) -> str:
    """docker-registry's config.yml: S3 storage in ``<project>-registry`` (no redirects: nodes never talk to the
    store), the storage health check behind /v2/, an HTTP secret shared by every replica (derived, so the config is
    the same on every run). The upload purger is off: in docker-registry 2.8 (Debian's) its walk of an S3 bucket
    panics on an empty folder (distribution issues #4358, #4590; fixed only in 3.x) and takes the replica down at a
    random minute of its first hour and every day after; what an aborted push leaves in ``_uploads`` stays."""
    http_secret = hmac.new(secret_key.encode(), f"aixsss-registry:{cfg.project}".encode(), hashlib.sha256).hexdigest()
    return f"""version: 0.1
log:
  level: warn  # info logs every request, the health check's every 5 s among them
  formatter: text
  accesslog:
    disabled: true
  fields:
    service: {_q(service_name(cfg))}
http:
  addr: ":{CONTAINER_PORT}"
  secret: {_q(http_secret)}
  headers:
    X-Content-Type-Options: [nosniff]
storage:
  s3:
    accesskey: {_q(access_key)}
    secretkey: {_q(secret_key)}
    region: {_q(cfg.s3.region)}
    regionendpoint: {_q(endpoint)}
    bucket: {_q(bucket_name(cfg))}
    secure: {"true" if endpoint.startswith("https:") else "false"}
    v4auth: true
    chunksize: 16777216
    multipartcopythresholdsize: 5368709120
  redirect:
    disable: true
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def _label_key(cfg: OpsConfig) -> bytes:
    """The key of the secret's name digest (so the name reveals nothing of the credentials)."""
    from aixsss_ops.context.embedded import label_key
    from aixsss_ops.context.layout import Layout

    return label_key(Layout(cfg.state))


def secret_name(cfg: OpsConfig, config_text: str) -> str:
    digest = hmac.new(_label_key(cfg), config_text.encode(), hashlib.sha256).hexdigest()[:12]
    return f"{service_name(cfg)}-{digest}"


# --- the overlay network --------------------------------------------------------------------------------------

def ensure_network(client, cfg: OpsConfig, say: Say = lambda _m: None):
    """The project's network as the swarm needs it: overlay, attachable (created when missing)."""
    import docker

    name = specs.network_name(cfg)
    for _ in range(2):
        found = [n for n in client.networks.list(names=[name]) if n.name == name]
        if found:
            net = found[0]
            driver = net.attrs.get("Driver")
            if driver != "overlay":
                raise UsageError(
                    f"network {name} is a {driver} network; the swarm runtime needs an overlay network of that name",
                    hint=f"stop what uses it (aixsss-ops stack down on the docker runtime), then: docker network rm "
                         f"{name}; or set docker.network in ops.toml to another name")
            if not net.attrs.get("Attachable"):
                say(f"network {name} is an overlay network that is not attachable: one-off containers cannot join it")
            return net
        try:
            net = client.networks.create(name, driver="overlay", attachable=True, scope="swarm",
                                         labels={L_PROJECT: cfg.project})
            say(f"created the overlay network {name}")
            return net
        except docker.errors.APIError as e:
            if e.status_code != 409 and "already exists" not in str(e):
                raise ServiceUnavailable(f"creating the overlay network {name} failed: {e.explanation or e}") from None
    raise ServiceUnavailable(f"the overlay network {name} could not be created")


# --- the service ------------------------------------------------------------------------------------------------

def _require_manager(client, cfg: OpsConfig) -> None:
    import docker
    import requests

    try:
        sw = client.info().get("Swarm") or {}
    except (docker.errors.DockerException, requests.RequestException, OSError) as e:
        raise unreachable(cfg, e) from None
    if sw.get("LocalNodeState") != "active" or not sw.get("ControlAvailable"):
        raise UsageError(f"the engine at {engine_host(cfg)} is not a swarm manager (swarm state: "
                         f"{sw.get('LocalNodeState') or 'inactive'})",
                         hint="run aixsss-ops against a manager of the swarm (docker.host in ops.toml), or "
                              "'docker swarm init' for a one-node swarm")


def _get_service(client, name: str):
    import docker

    try:
        return client.services.get(name)
    except docker.errors.NotFound:
        return None


def _ensure_secret(client, cfg: OpsConfig, text: str, say: Say):
    import docker

    name = secret_name(cfg, text)
    for s in client.secrets.list(filters={"name": name}):
        if s.name == name:
            return s
    try:
        s = client.secrets.create(name=name, data=text.encode(), labels={L_PROJECT: cfg.project, L_SERVICE: SERVICE})
    except docker.errors.APIError as e:
        if e.status_code != 409:
            raise ServiceUnavailable(f"creating the secret {name} failed: {e.explanation or e}") from None
        return next(s for s in client.secrets.list(filters={"name": name}) if s.name == name)
    say(f"created the secret {name} (the registry's configuration)")
    return client.secrets.get(s.id)


def _remove_old_secrets(client, cfg: OpsConfig, keep: str | None, say: Say) -> list[str]:
    import docker

    removed = []
    for s in client.secrets.list(filters={"label": [f"{L_PROJECT}={cfg.project}", f"{L_SERVICE}={SERVICE}"]}):
        if s.name == keep:
            continue
        try:
            s.remove()
            removed.append(s.name)
        except docker.errors.APIError:
            pass  # still referenced (a task shutting down): the next run removes it
    if removed:
        say(f"removed the old registry secrets {', '.join(removed)}")
    return removed


def _spec(cfg: OpsConfig, secret, network_id: str) -> tuple[dict, str]:
    """The service's create/update arguments and their digest (the L_SPEC label; equal digest = nothing to do)."""
    from docker import types

    ident = {"image": cfg.docker.base_image, "secret": secret.name, "network": network_id,
             "port": cfg.swarm.registry_port, "health": HEALTH, "user": RUN_AS, "v": 1}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    labels = {L_PROJECT: cfg.project, L_SERVICE: SERVICE, L_SPEC: digest}
    container = types.ContainerSpec(
        image=cfg.docker.base_image,
        command=["/usr/bin/docker-registry", "serve", CONFIG_PATH],
        user=f"{RUN_AS}:{RUN_AS}",
        labels=labels,
        secrets=[types.SecretReference(secret.id, secret.name, filename=SECRET_FILE, uid=RUN_AS, gid=RUN_AS,
                                       mode=0o400)],
        healthcheck=types.Healthcheck(test=HEALTH, interval=5_000_000_000, timeout=3_000_000_000, retries=3,
                                      start_period=10_000_000_000),
        stop_grace_period=10_000_000_000,
    )
    template = types.TaskTemplate(
        container_spec=container,
        restart_policy=types.RestartPolicy(condition="any", delay=2_000_000_000),
        networks=[types.NetworkAttachmentConfig(network_id, aliases=[SERVICE])],
    )
    kw = {
        "task_template": template,
        "name": service_name(cfg),
        "labels": labels,
        "mode": types.ServiceMode("global"),
        # host mode: each node's own replica on its own port; dnsrr: no virtual IP (this kernel has no IPVS)
        "endpoint_spec": types.EndpointSpec(mode="dnsrr", ports={cfg.swarm.registry_port: (CONTAINER_PORT, "tcp",
                                                                                            "host")}),
        # a host port cannot be held by the old and the new task at once
        "update_config": types.UpdateConfig(parallelism=1, order="stop-first", failure_action="pause",
                                            monitor=5_000_000_000),
    }
    return kw, digest


def _eligible_nodes(client) -> dict[str, str]:
    """id -> hostname of the nodes a global service runs on: ready and active."""
    out = {}
    for n in client.nodes.list():
        a = n.attrs
        if (a.get("Status") or {}).get("State") == "ready" and (a.get("Spec") or {}).get("Availability") == "active":
            out[n.id] = (a.get("Description") or {}).get("Hostname") or n.id[:12]
    return out


def replicas(client, cfg: OpsConfig) -> list[dict]:
    """One row per node a replica belongs on: hostname, the newest task's state (``running`` once its /v2/ answered:
    the task is held in ``starting`` until its health check passes), its error, whether it runs the current spec."""
    svc = _get_service(client, service_name(cfg))
    if svc is None:
        return []
    current = (svc.attrs["Spec"].get("Labels") or {}).get(L_SPEC)
    nodes = _eligible_nodes(client)
    newest: dict[str, dict] = {}
    for t in client.api.tasks(filters={"service": svc.id}):
        node = t.get("NodeID")
        if node and (node not in newest or t["Version"]["Index"] > newest[node]["Version"]["Index"]):
            newest[node] = t
    rows = []
    for node_id, host in sorted(nodes.items(), key=lambda kv: kv[1]):
        t = newest.get(node_id)
        st = (t or {}).get("Status") or {}
        spec_label = ((((t or {}).get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}).get(L_SPEC)
        rows.append({"node": host, "node_id": node_id, "state": st.get("State", "missing"),
                     "desired": (t or {}).get("DesiredState"), "error": st.get("Err") or "",
                     "current": spec_label == current})
    return rows


def _probe_address(cfg: OpsConfig) -> str:
    """Where this process reaches the replica of the manager's node: 127.0.0.1 for a local engine, else the host of
    the engine's address."""
    u = urlsplit(engine_host(cfg))
    return u.hostname if u.scheme in ("tcp", "http", "https", "ssh") and u.hostname else "127.0.0.1"


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=3).status_code == 200
    except requests.RequestException:
        return False


def _wait(client, cfg: OpsConfig, say: Say, timeout: float) -> list[dict]:
    """Until every node's replica runs the current spec and passed its health check (/v2/ inside its container),
    then /v2/ through the published port of the manager's node."""
    deadline = time.monotonic() + timeout
    last_note = 0.0
    rows: list[dict] = []
    while True:
        rows = replicas(client, cfg)
        if rows and all(r["current"] and r["state"] == "running" for r in rows):
            break
        for r in rows:
            if r["current"] and any(m in r["error"] for m in _FATAL_TASK_ERRORS):
                raise ServiceUnavailable(
                    f"the registry cannot start on node {r['node']}: {r['error']}",
                    hint=f"the registry runs from {cfg.docker.base_image}, which every node must hold: build it "
                         f"(aixsss-ops images base) or load it there (docker save {cfg.docker.base_image} | docker "
                         f"-H <node> load)")
        if time.monotonic() > deadline:
            waiting = ", ".join(f"{r['node']}: {r['state']}{' (' + r['error'] + ')' if r['error'] else ''}"
                                for r in rows if not (r["current"] and r["state"] == "running")) or "no node"
            raise ServiceUnavailable(f"the registry did not answer on every node within {timeout:.0f}s: {waiting}",
                                     hint=f"docker service ps {service_name(cfg)} --no-trunc; docker service logs "
                                          f"{service_name(cfg)}")
        if time.monotonic() - last_note > 5:
            done = sum(r["current"] and r["state"] == "running" for r in rows)
            say(f"waiting for the registry: {done}/{len(rows)} node(s) answer")
            last_note = time.monotonic()
        time.sleep(0.5)
    url = f"http://{_probe_address(cfg)}:{cfg.swarm.registry_port}/v2/"
    while not _answers(url):
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"the registry's replicas are healthy but {url} does not answer",
                                     hint=f"is port {cfg.swarm.registry_port} taken on this node? docker service ps "
                                          f"{service_name(cfg)}")
        time.sleep(0.3)
    return rows


def ensure_registry(client, cfg: OpsConfig, say: Say = lambda _m: None, *, s3: S3Target | None = None,
                    endpoint: str = S3_ENDPOINT, timeout: float = 120.0) -> dict:
    """Create or update the embedded registry and wait until every node's replica answers /v2/. Idempotent: an
    unchanged configuration leaves the service (and its version) as it is.

    ``s3``: where this process reaches the object store to create the bucket (default: the embedded stack's
    published port, ``http://<host>:<ports.s3>``); ``endpoint``: where the replicas reach it (default: ``s3`` on the
    overlay network). The registry's credentials are ``s3``'s."""
    import docker

    t0 = time.monotonic()
    if cfg.swarm.registry != "embedded":
        return {"registry": cfg.swarm.registry, "action": "none", "address": registry_address(cfg)}
    from aixsss_ops.s3 import S3Target, ensure_bucket

    _require_manager(client, cfg)
    if s3 is None:
        s3 = S3Target(f"http://{cfg.host}:{cfg.ports.s3}", cfg.s3.access_key, cfg.s3.secret_key.get_secret_value(),
                      cfg.s3.region)
    bucket = bucket_name(cfg)
    if ensure_bucket(s3, bucket):
        say(f"created the bucket {bucket}")
    net = ensure_network(client, cfg, say)
    text = registry_config(cfg, s3.access_key, s3.secret_key, endpoint)
    secret = _ensure_secret(client, cfg, text, say)
    kw, digest = _spec(cfg, secret, net.id)
    name = service_name(cfg)
    svc = _get_service(client, name)
    try:
        if svc is not None and (svc.attrs["Spec"].get("Mode") or {}).get("Global") is None:
            say(f"{name} is not a global service: recreating it")
            svc.remove()
            svc = None
        if svc is None:
            say(f"creating the service {name} (global, port {cfg.swarm.registry_port} on every node)")
            client.api.create_service(**kw)
            action = "created"
        elif (svc.attrs["Spec"].get("Labels") or {}).get(L_SPEC) != digest:
            say(f"updating the service {name}")
            client.api.update_service(svc.id, svc.attrs["Version"]["Index"], **kw)
            action = "updated"
        else:
            action = "unchanged"
    except docker.errors.APIError as e:
        raise ServiceUnavailable(f"{'creating' if svc is None else 'updating'} the service {name} failed: "
                                 f"{e.explanation or e}") from None
    rows = _wait(client, cfg, say, timeout)
    if action != "unchanged":
        _remove_old_secrets(client, cfg, secret.name, say)
    svc = client.services.get(name)
    return {"registry": "embedded", "service": name, "action": action, "version": svc.attrs["Version"]["Index"],
            "address": registry_address(cfg), "bucket": bucket, "secret": secret.name,
            "nodes": {r["node"]: r["state"] for r in rows}, "seconds": round(time.monotonic() - t0, 1)}


def remove_registry(client, cfg: OpsConfig, say: Say = lambda _m: None) -> dict:
    """Remove the service and its secrets; the bucket (the images) is kept."""
    import docker

    name = service_name(cfg)
    svc = _get_service(client, name)
    if svc is not None:
        try:
            svc.remove()
            say(f"removed the service {name}")
        except docker.errors.NotFound:
            pass
    removed: list[str] = []
    deadline = time.monotonic() + 30
    while True:  # a secret is in use until the service is gone
        removed += _remove_old_secrets(client, cfg, None, say)
        left = client.secrets.list(filters={"label": [f"{L_PROJECT}={cfg.project}", f"{L_SERVICE}={SERVICE}"]})
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    return {"service": name, "removed": svc is not None, "secrets": removed}


# --- push ---------------------------------------------------------------------------------------------------------

def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{n:.0f} B"


def push(client, cfg: OpsConfig, image: str, say: Say = lambda _m: None) -> str:
    """Tag ``image`` for the registry and push it through the engine (the manager node's replica, for the embedded
    registry). Returns ``<registry>/<repo>:<tag>@<digest>``, what services name; ``image`` itself with
    ``registry = "none"``."""
    import docker
    import requests

    try:
        img = client.images.get(image)
    except docker.errors.ImageNotFound:
        raise UsageError(f"image {image} is not on the engine at {engine_host(cfg)}",
                         hint="build it first (aixsss-ops images app)") from None
    except (docker.errors.DockerException, requests.RequestException) as e:
        raise unreachable(cfg, e) from None
    ref = image_ref(cfg, image)
    if ref == image:
        say(f"swarm.registry = none: {image} stays on this engine")
        return image
    repo, tag = ref.rsplit(":", 1)
    img.tag(repo, tag)
    say(f"pushing {ref}")
    layers: dict[str, str] = {}
    progress: dict[str, tuple[int, int]] = {}
    digest = ""
    error = ""
    last = time.monotonic()
    try:
        for msg in client.api.push(repo, tag=tag, stream=True, decode=True):
            if msg.get("error") or msg.get("errorDetail"):
                error = (msg.get("errorDetail") or {}).get("message") or msg.get("error") or "push failed"
                break
            aux = msg.get("aux") or {}
            if aux.get("Digest"):
                digest = aux["Digest"]
            lid, status = msg.get("id"), msg.get("status") or ""
            if not lid or lid == tag:
                continue
            detail = msg.get("progressDetail") or {}
            if status == "Pushing" and detail.get("total"):
                progress[lid] = (detail.get("current", 0), detail["total"])
            elif status in ("Pushed", "Layer already exists") or status.startswith("Mounted from"):
                if layers.get(lid) != status:
                    size = progress.get(lid, (0, 0))[1]
                    word = "already in the registry" if status == "Layer already exists" else status.lower()
                    say(f"layer {lid}: {word}" + (f" ({_mb(size)})" if size else ""))
                progress.pop(lid, None)
            layers[lid] = status
            if progress and time.monotonic() - last > 5:
                cur, tot = (sum(v[i] for v in progress.values()) for i in (0, 1))
                say(f"pushing {len(progress)} layer(s): {_mb(cur)} of {_mb(tot)}")
                last = time.monotonic()
    except (docker.errors.APIError, requests.RequestException) as e:
        error = str(getattr(e, "explanation", None) or e)
    if error or not digest:
        where = registry_address(cfg)
        hint = (f"is the registry up? aixsss-ops images push starts it; docker service ps {service_name(cfg)}"
                if cfg.swarm.registry == "embedded" else f"check that {where} answers and that this engine may push "
                                                          f"there (docker login {where})")
        raise ServiceUnavailable(f"pushing {ref} failed: {error or 'the engine reported no digest'}", hint=hint)
    done = sum(1 for s in layers.values() if s == "Pushed")
    say(f"pushed {ref} ({done} of {len(layers)} layer(s) uploaded): {digest}")
    return f"{ref}@{digest}"

