"""A release's build steps (``app.build``) run in a build container, whose result is the release's app image.

The container starts from the runtime image (Python and Node), gets the release's source at APP_ROOT through the
Engine API (no bind mount: the engine may be remote), runs each step with ``exec`` (its cwd inside the release,
its timeout), and is committed as ``docker.app_image:<release id>``. The package managers' caches live in a
volume of the project (``<project>-buildcache``, at /cache), kept between releases, so a second release
downloads only what changed. The web build comes back into the release's folder on this host, where the proxy
takes it from. The build container has this host's proxy settings and its TLS trust (the CA bundle a
``NODE_EXTRA_CA_CERTS``/``SSL_CERT_FILE`` names), never its secrets.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import shlex
import shutil
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.releases import BuildFailed
from aixsss_ops.runtime.docker_engine import L_PROJECT
from aixsss_ops.runtime.docker_specs import APP_ROOT, volume_name

if TYPE_CHECKING:
    from aixsss_ops.config import BuildStep, OpsConfig

Progress = Callable[[str], None]
CACHE = "/cache"
CACHE_ENV = {  # where npm, pnpm, yarn and corepack keep what they download
    "npm_config_cache": f"{CACHE}/npm",
    "npm_config_store_dir": f"{CACHE}/pnpm-store",
    "YARN_CACHE_FOLDER": f"{CACHE}/yarn",
    "COREPACK_HOME": f"{CACHE}/corepack",
    "XDG_CACHE_HOME": f"{CACHE}/xdg",
    "HOME": "/root",
}
PASSED_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
              "npm_config_registry")
CA_ENV = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")
CA_IN_CONTAINER = "/usr/local/share/aixsss/host-ca.pem"


def cache_volume(cfg: OpsConfig) -> str:
    return volume_name(cfg, "buildcache")


def _host_ca() -> Path | None:
    for var in CA_ENV:
        path = os.environ.get(var)
        if path and Path(path).is_file():
            return Path(path)
    return None


def build_env(release_id: str, version: str) -> dict[str, str]:
    env = {**CACHE_ENV, "AIXSSS_RELEASE": release_id, "AIXSSS_VERSION": version, "CI": "true"}
    env |= {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    if _host_ca():
        env |= {"NODE_EXTRA_CA_CERTS": CA_IN_CONTAINER, "SSL_CERT_FILE": CA_IN_CONTAINER}
    return env


def _source_tar(release: Path, ca: Path | None) -> bytes:
    """The release at APP_ROOT (relative paths, links kept as links) and the host's CA bundle."""
    buf = io.BytesIO()
    root = APP_ROOT.lstrip("/")
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(release), arcname=root, filter=_owned_by_root)
        if ca is not None:
            tar.add(str(ca), arcname=CA_IN_CONTAINER.lstrip("/"), filter=_owned_by_root)
    return buf.getvalue()


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if posixpath.basename(info.name) == ".building":
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o644 if info.isfile() else 0o755
    return info


def builder_name(cfg: OpsConfig, release_id: str) -> str:
    """The build container of a release: named, not labelled (a commit passes a container's labels on to the
    image and to every container of it)."""
    return f"{cfg.project}-build-{release_id}"


def _remove_old_builder(client, cfg: OpsConfig, release_id: str) -> None:
    import docker

    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(builder_name(cfg, release_id)).remove(force=True)


def build_image(client, cfg: OpsConfig, release: Path, version: str, steps: Sequence[BuildStep], tag: str,
                labels: dict[str, str], say: Progress) -> dict:
    """Run ``steps`` on the release in a build container and commit it as ``tag``; raise BuildFailed (with the
    step's last lines) when one fails: then no image is made and the container is gone."""
    import docker

    release_id = release.name
    _remove_old_builder(client, cfg, release_id)  # a killed build's container
    try:
        client.volumes.get(cache_volume(cfg))
    except docker.errors.NotFound:
        client.volumes.create(cache_volume(cfg), labels={L_PROJECT: cfg.project})
    t0 = time.monotonic()
    try:
        c = client.containers.create(
            cfg.docker.runtime_image, ["sleep", "infinity"], entrypoint=[], user="0:0", working_dir=APP_ROOT,
            environment=build_env(release_id, version), detach=True, name=builder_name(cfg, release_id),
            volumes={cache_volume(cfg): {"bind": CACHE, "mode": "rw"}},
        )
    except docker.errors.ImageNotFound:
        raise UsageError(f"image {cfg.docker.runtime_image} (runtime) is not on the engine",
                         hint="build it with 'aixsss-ops images base'") from None
    try:
        if not c.put_archive("/", _source_tar(release, _host_ca())):
            raise OpsError(f"could not copy release {release_id} into its build container")
        c.start()
        for i, step in enumerate(steps, 1):
            say(f"build {release_id} step {i}/{len(steps)} (in a container): {shlex.join(step.run)}")
            _exec_step(client, c, step, i, len(steps))
        c.kill()
        changes = [f"WORKDIR {APP_ROOT}", f"ENV APP_VERSION={version}", 'CMD ["/bin/bash"]']
        changes += [f"LABEL {k}={json.dumps(v)}" for k, v in labels.items()]
        repo, _, image_tag = tag.rpartition(":")
        c.commit(repository=repo, tag=image_tag, changes=changes)
        _web_back(c, cfg, release)
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            c.remove(force=True)
    say(f"built {tag} in {time.monotonic() - t0:.0f}s")
    return {"image": tag, "built": True, "seconds": round(time.monotonic() - t0, 1)}


def _exec_step(client, c, step: BuildStep, i: int, n: int) -> None:
    api = client.api
    cwd = posixpath.normpath(posixpath.join(APP_ROOT, step.cwd))
    if cwd != APP_ROOT and not cwd.startswith(APP_ROOT + "/"):
        raise UsageError(f"build step {i}: cwd {step.cwd!r} is outside the release")
    argv = ["timeout", "-k", "5", str(max(1, int(step.timeout))), *step.run]
    ex = api.exec_create(c.id, argv, workdir=cwd, environment=dict(step.env), stdout=True, stderr=True)
    tail = b""
    old = api.timeout
    api.timeout = step.timeout + 60
    try:
        for chunk in api.exec_start(ex["Id"], stream=True):
            tail = (tail + chunk)[-8000:]
    finally:
        api.timeout = old
    code = api.exec_inspect(ex["Id"]).get("ExitCode")
    if code == 0:
        return
    lines = tail.decode(errors="replace").splitlines()[-30:]
    what = {124: f"did not finish within {step.timeout:g}s",
            127: f"exited 127 ({step.run[0]} was not found in the runtime image?)"}.get(code, f"exited {code}")
    raise BuildFailed(f"build step {i}/{n} ({shlex.join(step.run)}) {what}; nothing live was touched",
                      details="last lines of its output:\n" + "\n".join(lines))


def _web_back(c, cfg: OpsConfig, release: Path) -> None:
    """The built web root, from the container into the release's folder (the proxy serves it from there)."""
    import docker

    web = cfg.app.web_root
    try:
        stream, _stat = c.get_archive(posixpath.join(APP_ROOT, web))
    except docker.errors.NotFound:
        return  # an app without a web build
    dest = release / web
    parent = dest.parent
    shutil.rmtree(dest, ignore_errors=True)
    parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        tar.extractall(parent, filter="data")
    extracted = parent / posixpath.basename(posixpath.join(APP_ROOT, web))
    if extracted != dest and extracted.exists():
        extracted.rename(dest)


def web_from_image(client, image: str, cfg: OpsConfig, release: Path) -> None:
    """The web build of an existing app image back into the release's folder (a release folder made again)."""
    c = client.containers.create(image, ["true"], entrypoint=[])
    try:
        _web_back(c, cfg, release)
    finally:
        c.remove(force=True)
