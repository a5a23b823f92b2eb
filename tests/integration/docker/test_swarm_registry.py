"""The swarm's embedded image registry against a real engine in swarm mode: Debian's docker-registry as a global
service, its blobs in a real SeaweedFS (the stack's own ``s3`` spec, run here as a swarm service with the alias ``s3``
on the project's overlay network, its credentials as swarm secrets), images pushed and pulled through the engine."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import tarfile
import time
import uuid

import docker
import pytest
import requests
from docker import types

from aixsss_ops.config import load_config
from aixsss_ops.errors import ServiceUnavailable, UsageError
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime import swarm_registry as sr
from aixsss_ops.runtime.docker_engine import L_PROJECT, L_SERVICE
from aixsss_ops.s3 import S3Target
from tests.cli import run_cli
from tests.conftest import free_port, stack_config, state_tmpdir
from tests.integration.docker.conftest import SOCK

MANIFEST_TYPES = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"


def client(timeout: int = 600) -> docker.DockerClient:
    return docker.DockerClient(base_url=f"unix://{SOCK}", timeout=timeout)


@pytest.fixture(scope="module")
def swarm(docker_engine, request):
    """The engine as a swarm manager (a one-node swarm is made when it is in none; never left), with the images the
    registry (the base image: docker-registry) and the object store (the runtime image) run from."""
    c = client()
    state = (c.info().get("Swarm") or {}).get("LocalNodeState")
    if state == "inactive":
        c.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    elif state != "active":
        pytest.fail(f"the engine's swarm state is {state!r}")
    have = set()
    for name in ("aixsss/base:bookworm", "aixsss/runtime:bookworm"):
        try:
            c.images.get(name)
            have.add(name)
        except docker.errors.ImageNotFound:
            pass
    if len(have) < 2:
        request.getfixturevalue("docker_images")
    out = c.containers.run("aixsss/base:bookworm", ["/usr/bin/docker-registry", "--version"], remove=True)
    assert b"2.8" in out, out
    return c


def _wait_gone(c, names: set[str], timeout: float = 60) -> None:
    """Until no container of the services ``names`` is left (swarm removes them after the service)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        key = "com.docker.swarm.service.name"  # the listing's own labels: no inspect of a container going away
        left = [x for x in c.api.containers(all=True, filters={"label": key}) if x["Labels"].get(key) in names]
        if not left:
            return
        time.sleep(0.5)


def purge_swarm(project: str) -> None:
    """Every service, secret, volume, network and image tag a test project made."""
    c = client()
    label = f"{L_PROJECT}={project}"
    names = set()
    for s in c.services.list(filters={"label": label}):
        names.add(s.name)
        s.remove()
    for box in c.containers.list(all=True, filters={"label": label}):
        box.remove(force=True)
    _wait_gone(c, names)
    for s in c.secrets.list(filters={"label": label}):
        s.remove()
    for v in c.volumes.list(filters={"label": label}):
        v.remove(force=True)
    for n in c.networks.list(filters={"label": label}):
        n.remove()
    def mine(ref: str) -> bool:  # its images and their registry tags
        return ref.startswith(f"{project}/") or f"/{project}/" in ref

    for img in c.images.list():
        refs = [t for t in img.tags if mine(t)]
        if not img.tags and any(mine(d) for d in img.attrs.get("RepoDigests") or []):
            refs = [img.id]  # pulled by digest: no tag
        for ref in refs:
            with contextlib.suppress(docker.errors.NotFound):
                c.images.remove(ref)


def start_s3(c, cfg, project: str) -> S3Target:
    """The stack's SeaweedFS (``docker_specs.s3``) as a swarm service on the overlay network, alias ``s3``, its two
    key files as swarm secrets, its S3 port published in host mode for this process."""
    net = sr.ensure_network(c, cfg)
    spec = specs.s3(cfg)
    values = {"S3_ACCESS_KEY": cfg.s3.access_key, "S3_SECRET_KEY": cfg.s3.secret_key.get_secret_value()}
    refs = []
    for fname, (_kind, var) in spec.secrets.items():
        s = c.secrets.create(name=f"{project}-{fname}", data=values[var].encode(), labels={L_PROJECT: project})
        refs.append(types.SecretReference(s.id, f"{project}-{fname}", filename=fname, mode=0o400))
    mounts = [types.Mount("/data", specs.volume_name(cfg, "s3"), type="volume", labels={L_PROJECT: project})]
    container = types.ContainerSpec(image=spec.image, command=spec.command, env=spec.environment, secrets=refs,
                                    mounts=mounts)
    template = types.TaskTemplate(container_spec=container, networks=[types.NetworkAttachmentConfig(net.id,
                                                                                                    aliases=["s3"])])
    c.api.create_service(template, name=f"{project}-s3", labels={L_PROJECT: project, L_SERVICE: "s3"},
                         endpoint_spec=types.EndpointSpec(mode="dnsrr",
                                                          ports={cfg.ports.s3: (specs.PORTS["s3"], "tcp", "host")}))
    target = S3Target(f"http://127.0.0.1:{cfg.ports.s3}", values["S3_ACCESS_KEY"], values["S3_SECRET_KEY"],
                      cfg.s3.region)
    deadline = time.monotonic() + 120
    while True:
        try:
            target.client(timeout=3).list_buckets()
            return target
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def start_replica(c, cfg, project: str, config_text: str, port: int):
    """A registry container outside the service: the same program and configuration, on the project's overlay
    network, published on 127.0.0.1:``port``."""
    box = c.containers.create(cfg.docker.base_image, ["/usr/bin/docker-registry", "serve", "/tmp/registry.yml"],
                              user=f"{sr.RUN_AS}:{sr.RUN_AS}", network=specs.network_name(cfg),
                              ports={f"{sr.CONTAINER_PORT}/tcp": ("127.0.0.1", port)}, labels={L_PROJECT: project})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("registry.yml")
        data = config_text.encode()
        info.size, info.mode, info.uid, info.gid = len(data), 0o400, int(sr.RUN_AS), int(sr.RUN_AS)
        tf.addfile(info, io.BytesIO(data))
    box.put_archive("/tmp", buf.getvalue())
    box.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                return box
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(box.logs()[-2000:].decode())
        time.sleep(0.3)


@pytest.fixture(scope="module")
def env(swarm):
    root = state_tmpdir("aixsss-swreg-")
    project = f"t{uuid.uuid4().hex[:8]}"
    access, secret = f"ak{uuid.uuid4().hex[:14]}", f"sk{uuid.uuid4().hex}"
    path = stack_config(root, swarm={"registry_port": free_port()}, s3={"access_key": access, "secret_key": secret},
                        docker={"app_image": f"{project}/app"})
    path.write_text(f'project = "{project}"\nruntime = "swarm"\n' + path.read_text())
    cfg = load_config(path)
    try:
        s3 = start_s3(swarm, cfg, project)
        first = sr.ensure_registry(swarm, cfg, lambda _m: None)
        yield {"path": path, "cfg": cfg, "project": project, "s3": s3, "first": first, "access": access,
               "secret": secret}
    finally:
        sr.remove_registry(client(), cfg)
        purge_swarm(project)


def build_image(c, tag: str, base: str | None = None, size: int = 64) -> None:
    """A small image of its own content: FROM scratch (or ``base``) + one file."""
    files = {"Dockerfile": f"FROM {base or 'scratch'}\nCOPY f /srv/app/f\n".encode(),
             "f": uuid.uuid4().hex.encode() * size}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    buf.seek(0)
    c.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True)


def test_ensure_registry_answers_on_the_node_and_second_ensure_changes_nothing(env, swarm):
    cfg, first = env["cfg"], env["first"]
    assert first["action"] == "created" and first["registry"] == "embedded"
    assert first["nodes"] and set(first["nodes"].values()) == {"running"}
    assert first["address"] == f"127.0.0.1:{cfg.swarm.registry_port}"
    r = requests.get(f"http://127.0.0.1:{cfg.swarm.registry_port}/v2/", timeout=5)
    assert r.status_code == 200 and r.headers.get("Docker-Distribution-Api-Version") == "registry/2.0"
    svc = swarm.services.get(sr.service_name(cfg))
    spec = svc.attrs["Spec"]
    assert "Global" in spec["Mode"]
    assert spec["Labels"]["io.aixsss.project"] == env["project"] and spec["Labels"]["io.aixsss.service"] == "registry"
    ports = spec["EndpointSpec"]["Ports"]
    assert [(p["PublishedPort"], p["TargetPort"], p["PublishMode"]) for p in ports] == [
        (cfg.swarm.registry_port, sr.CONTAINER_PORT, "host")]
    net = swarm.networks.get(specs.network_name(cfg))
    assert net.attrs["Driver"] == "overlay" and net.attrs["Attachable"]

    second = sr.ensure_registry(swarm, cfg, lambda _m: None)
    assert second["action"] == "unchanged"
    assert second["version"] == first["version"] == client().services.get(sr.service_name(cfg)).attrs["Version"]["Index"]
    assert second["secret"] == first["secret"]


def test_service_inspect_shows_no_credential(env, swarm):
    name = sr.service_name(env["cfg"])
    if shutil.which("docker"):
        text = subprocess.run(["docker", "service", "inspect", name], capture_output=True, text=True,
                              check=True).stdout
    else:
        text = json.dumps(swarm.api.inspect_service(name))
    assert name in text
    assert env["secret"] not in text and env["access"] not in text
    secret = swarm.secrets.get(env["first"]["secret"])
    assert env["secret"] not in json.dumps(secret.attrs)
    ref = json.loads(text)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Secrets"][0]
    assert ref["File"]["Name"] == sr.SECRET_FILE and ref["File"]["Mode"] == 0o400
    # the config reaches the registry as that file, named on its command line
    assert json.loads(text)[0]["Spec"]["TaskTemplate"]["ContainerSpec"]["Command"][-1] == sr.CONFIG_PATH


def test_push_then_pull_back_by_reference_and_blobs_are_in_the_bucket(env, swarm):
    cfg, project = env["cfg"], env["project"]
    image = f"{project}/tiny:1"
    build_image(swarm, image)
    lines: list[str] = []
    ref = sr.push(swarm, cfg, image, lines.append)
    repo_tag, _, digest = ref.partition("@")
    assert repo_tag == f"127.0.0.1:{cfg.swarm.registry_port}/{project}/tiny:1" and digest.startswith("sha256:")
    assert any(line.startswith("pushed ") for line in lines), lines
    repo = repo_tag.rsplit(":", 1)[0]

    swarm.images.remove(repo_tag)
    swarm.images.remove(image)
    with pytest.raises(docker.errors.ImageNotFound):
        swarm.images.get(f"{repo}@{digest}")
    pulled = swarm.images.pull(repo, tag=digest)
    assert f"{repo}@{digest}" in pulled.attrs["RepoDigests"]

    # another replica (a registry container on the overlay with the same configuration, its own port) serves it too:
    # the replicas share the bucket, not a disk
    port2 = free_port()
    other = start_replica(swarm, cfg, project, sr.registry_config(cfg, env["access"], env["secret"]), port2)
    try:
        swarm.images.remove(f"{repo}@{digest}")
        pulled = swarm.images.pull(f"127.0.0.1:{port2}/{project}/tiny", tag=digest)
        assert f"127.0.0.1:{port2}/{project}/tiny@{digest}" in pulled.attrs["RepoDigests"]
    finally:
        other.remove(force=True)

    m = requests.get(f"http://127.0.0.1:{cfg.swarm.registry_port}/v2/{project}/tiny/manifests/{digest}",
                     headers={"Accept": MANIFEST_TYPES}, timeout=10)
    assert m.status_code == 200, m.text
    blobs = [m.json()["config"]["digest"]] + [layer["digest"] for layer in m.json()["layers"]]
    keys = {o.object_name for o in env["s3"].client().list_objects(sr.bucket_name(cfg),
                                                                   prefix="docker/registry/v2/blobs/",
                                                                   recursive=True)}
    for b in blobs:
        hexd = b.split(":", 1)[1]
        assert f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data" in keys, (b, sorted(keys)[:10])
    repos = env["s3"].client().list_objects(sr.bucket_name(cfg), prefix=f"docker/registry/v2/repositories/{project}/",
                                            recursive=True)
    assert any(o.object_name.startswith(f"docker/registry/v2/repositories/{project}/tiny/") for o in repos)


def test_images_push_cli_prints_the_reference_and_json(env, swarm):
    cfg, project = env["cfg"], env["project"]
    image = f"{project}/tiny:cli"
    build_image(swarm, image)
    r = run_cli("images", "push", image, config=env["path"], timeout=300)
    assert r.code == 0, r.output
    want = f"127.0.0.1:{cfg.swarm.registry_port}/{project}/tiny:cli@sha256:"
    assert r.stdout.strip().startswith(want), r.output
    assert "pushing" in r.stderr

    r = run_cli("images", "push", image, "--json", config=env["path"], timeout=300)
    assert r.code == 0, r.output
    doc = r.json
    assert doc["reference"].startswith(want) and doc["digest"] == doc["reference"].rpartition("@")[2]
    assert doc["registry"] == f"127.0.0.1:{cfg.swarm.registry_port}" and doc["registry_action"] == "unchanged"
    assert env["secret"] not in r.output


def test_images_push_defaults_to_the_live_release(env, swarm):
    from aixsss_ops.context.deploystate import Colors, ColorSpec, DeployState
    from aixsss_ops.context.layout import Layout

    cfg, project = env["cfg"], env["project"]
    r = run_cli("images", "push", config=env["path"])
    assert r.code == 2 and "no release is live" in r.output, r.output
    release = "1.0.0-0123456789ab"
    build_image(swarm, f"{project}/app:{release}")
    DeployState(Layout(cfg.state).deploy_dir).save(
        Colors("blue", {"blue": ColorSpec(release=release, source="/nowhere", version="1.0.0", status="live")}))
    r = run_cli("--json", "images", "push", config=env["path"])
    assert r.code == 0, r.output
    assert r.json["release"] == release and r.json["image"] == f"{project}/app:{release}"
    assert r.json["reference"].startswith(f"127.0.0.1:{cfg.swarm.registry_port}/{project}/app:{release}@sha256:")
    r = run_cli("images", "push", "no-such-thing", config=env["path"])
    assert r.code == 2 and "neither a release" in r.output, r.output


def test_push_to_an_unreachable_registry_is_one_clear_error(env, swarm):
    cfg = env["cfg"]
    image = f"{env['project']}/tiny:err"
    build_image(swarm, image)
    port = free_port()
    other = load_config(env["path"])
    other.swarm.registry = f"127.0.0.1:{port}"
    with pytest.raises(ServiceUnavailable) as e:
        sr.push(swarm, other, image, lambda _m: None)
    assert f"pushing 127.0.0.1:{port}/{env['project']}/tiny:err failed" in e.value.message
    assert sr.image_ref(cfg, "ghcr.io/acme/app:7") == f"127.0.0.1:{cfg.swarm.registry_port}/acme/app:7"
    other.swarm.registry = "none"
    assert sr.push(swarm, other, image, lambda _m: None) == image


def test_a_bridge_network_of_the_project_name_is_refused(swarm):
    name = f"t{uuid.uuid4().hex[:8]}"
    root = state_tmpdir("aixsss-swreg-net-")
    cfg = load_config(stack_config(root, docker={"network": name}))
    net = swarm.networks.create(name, driver="bridge")
    try:
        with pytest.raises(UsageError) as e:
            sr.ensure_network(swarm, cfg)
        assert "bridge network" in e.value.message and "overlay" in e.value.message
    finally:
        net.remove()


@pytest.mark.slow
def test_two_node_swarm_pushed_through_one_node_pulled_on_the_other(swarm):
    """A real two-node swarm (tests/integration/docker/swarm/cluster.py: dockerd in containers): a replica on each
    node, an image pushed through node 1's replica and pulled by node 2's engine from its own replica. The object
    store is a SeaweedFS container of the outer engine on the nodes' network (a managed store, as far as the
    registry knows)."""
    from tests.integration.docker.swarm.cluster import LABEL, Cluster

    prefix = f"aixsss-swreg{uuid.uuid4().hex[:4]}"
    with Cluster(2, prefix=prefix, subnet="10.219.7.0/24", say=print) as cl:
        cl.form(managers=1)
        loaded = cl.load_image("aixsss/base:bookworm")
        root = state_tmpdir("aixsss-swreg2-")
        project = f"t{uuid.uuid4().hex[:8]}"
        path = stack_config(root, docker={"host": cl.engine_url(1)}, swarm={"registry_port": free_port()},
                            s3={"access_key": f"ak{uuid.uuid4().hex[:8]}", "secret_key": uuid.uuid4().hex})
        path.write_text(f'project = "{project}"\nruntime = "swarm"\n' + path.read_text())
        cfg = load_config(path)

        # the store: the stack's s3 spec as an outer container at a fixed address of the nodes' network
        ip = str(cl.subnet.network_address + 6)
        spec = specs.s3(cfg)
        api = cl.outer.api
        box = api.create_container(spec.image, command=spec.command, labels={LABEL: prefix},  # weed says -ip=s3
                                   networking_config=api.create_networking_config(
                                       {cl.network: api.create_endpoint_config(ipv4_address=ip, aliases=["s3"])}))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            data = tarfile.TarInfo("data")  # the store's folder (the container's own layer: removed with it)
            data.type, data.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(data)
            for fname, value in (("s3_access_key", cfg.s3.access_key),
                                 ("s3_secret_key", cfg.s3.secret_key.get_secret_value())):
                info = tarfile.TarInfo(f"run/secrets/{fname}")
                info.size, info.mode = len(value), 0o400
                tf.addfile(info, io.BytesIO(value.encode()))
        api.put_archive(box["Id"], "/", buf.getvalue())
        api.start(box["Id"])
        endpoint = f"http://{ip}:{specs.PORTS['s3']}"
        store = S3Target(endpoint, cfg.s3.access_key, cfg.s3.secret_key.get_secret_value(), cfg.s3.region)
        deadline = time.monotonic() + 120
        while True:
            try:
                store.client(timeout=3).list_buckets()
                break
            except Exception:
                state = api.inspect_container(box["Id"])["State"]
                if time.monotonic() > deadline or not state["Running"]:
                    raise AssertionError(api.logs(box["Id"], tail=20).decode(errors="replace")) from None
                time.sleep(0.5)

        t0 = time.monotonic()
        res = sr.ensure_registry(cl.client(1), cfg, print, s3=store, endpoint=endpoint, timeout=180)
        started = time.monotonic() - t0
        assert res["action"] == "created" and len(res["nodes"]) == 2, res
        assert set(res["nodes"].values()) == {"running"}, res
        for i in (1, 2):
            assert requests.get(f"http://{cl.ip(i)}:{cfg.swarm.registry_port}/v2/", timeout=5).status_code == 200

        image = f"{project}/tiny:2n"
        build_image(cl.client(1), image)
        ref = sr.push(cl.client(1), cfg, image, print)
        repo, _, digest = ref.partition("@")
        repo = repo.rsplit(":", 1)[0]
        t1 = time.monotonic()
        pulled = cl.client(2).images.pull(repo, tag=digest)
        assert f"{repo}@{digest}" in pulled.attrs["RepoDigests"]
        print(f"\ntwo nodes: base image loaded in {loaded['seconds']}s, registry up on both in {started:.1f}s, "
              f"pull on node 2 {time.monotonic() - t1:.2f}s")
