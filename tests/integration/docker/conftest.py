"""The docker runtime's tests run against a real dockerd: started here when none answers, stopped at the end if
started here. Images are built once per session (reused when present). If the engine cannot start, the run fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.conftest import stack_config, state_tmpdir

SOCK = "/var/run/docker.sock"


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: the docker runtime against a real dockerd (CI runs them)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/docker/" in str(item.fspath):
            item.add_marker(pytest.mark.docker)


def _answers() -> bool:
    import docker

    try:
        docker.DockerClient(base_url=f"unix://{SOCK}", timeout=5).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def docker_engine():
    """A dockerd answering on the default socket; started (and later stopped) here when none answers."""
    os.environ.pop("DOCKER_HOST", None)
    if _answers():
        yield SOCK
        return
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    if not os.path.exists(dockerd):
        pytest.fail("dockerd is not installed (apt-get install docker.io; scripts/setup does it)")
    log_dir = state_tmpdir("aixsss-dockerd-")
    log = open(log_dir / "dockerd.log", "wb")
    proc = subprocess.Popen([dockerd, "--host", f"unix://{SOCK}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while not _answers():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"dockerd did not start: {(log_dir / 'dockerd.log').read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        yield SOCK
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def docker_images(docker_engine):
    """The base and runtime images (``images base``: kept when present and up to date)."""
    root = state_tmpdir("aixsss-images-")
    cfg = stack_config(root)
    r = run_cli("images", "base", config=cfg, timeout=1500)
    assert r.code == 0, r.output
    return cfg


def docker_config(prefix: str, **sections) -> tuple[Path, str]:
    """An ops.toml for a docker stack of its own: a unique project (containers, network, volumes), free ports."""
    root = state_tmpdir(prefix)
    project = f"t{uuid.uuid4().hex[:8]}"
    cfg = stack_config(root, **sections)
    cfg.write_text(f'project = "{project}"\nruntime = "docker"\n' + cfg.read_text())
    return cfg, project


def purge(project: str) -> None:
    """Remove every container, volume and the network of a test project."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)
    label = f"io.aixsss.project={project}"
    for c in client.containers.list(all=True, filters={"label": label}):
        c.remove(force=True)
    for v in client.volumes.list(filters={"label": label}):
        v.remove(force=True)
    for n in client.networks.list(filters={"label": label}):
        try:
            n.remove()
        except docker.errors.APIError as e:
            if "not found" not in str(e).lower():  # the engine may list a network it has just removed
                raise


@pytest.fixture(scope="session")
def swarm_manager(docker_engine):
    """The test engine as a one-node swarm manager (``docker swarm init`` when it is none; it stays one: leaving
    would remove services other tests of the session still use, and the engine goes with the session)."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)
    state = client.info().get("Swarm", {})
    if state.get("LocalNodeState") != "active":
        client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377")
    assert client.info()["Swarm"].get("ControlAvailable"), "the test engine is a swarm worker, not a manager"
    return SOCK


def swarm_config(prefix: str, swarm: dict | None = None, **sections) -> tuple[Path, str]:
    """An ops.toml for a swarm stack of its own (a unique project, free ports): docker_config's, on the swarm."""
    cfg, project = docker_config(prefix, **sections)
    text = cfg.read_text().replace('runtime = "docker"', 'runtime = "swarm"', 1)
    lines = [f"{k} = {json.dumps(v) if not isinstance(v, dict) else _inline(v)}" for k, v in (swarm or {}).items()]
    cfg.write_text(text + "\n[swarm]\n" + "\n".join(lines) + "\n")
    return cfg, project


def _inline(d: dict) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + "}"


def purge_swarm(project: str) -> None:
    """Remove the services and secrets of a test project, then its containers, volumes and network."""
    import docker

    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)
    label = f"io.aixsss.project={project}"
    for s in client.services.list(filters={"label": label}):
        s.remove()
    deadline = time.monotonic() + 60
    while client.containers.list(all=True, filters={"label": label}) and time.monotonic() < deadline:
        for c in client.containers.list(all=True, filters={"label": label}):
            with contextlib.suppress(docker.errors.APIError):
                c.remove(force=True)
        time.sleep(0.5)
    for s in client.secrets.list(filters={"label": label}):
        with contextlib.suppress(docker.errors.APIError):
            s.remove()
    for n in client.networks.list(filters={"label": label}):
        while True:  # an overlay network is busy until the last task's endpoint left it
            try:
                n.remove()
                break
            except docker.errors.APIError as e:
                if "not found" in str(e).lower():  # the engine may list a network it has just removed
                    break
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    for v in client.volumes.list(filters={"label": label}):
        while True:  # a removed task's container lets go of its volume a moment later
            try:
                v.remove(force=True)
                break
            except docker.errors.APIError:
                if time.monotonic() > deadline:
                    raise
                for c in client.containers.list(all=True, filters={"volume": v.name}):
                    with contextlib.suppress(docker.errors.APIError):
                        c.remove(force=True)
                time.sleep(0.5)
    purge(project)
