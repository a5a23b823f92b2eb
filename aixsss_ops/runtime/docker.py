"""The docker engine behind the runtime protocol, through the Engine API (the ``docker`` SDK).

Containers are found again by their labels (project, service, color, release): the engine is the only record
of what runs, so nothing local can disagree with it. No secret is part of a container's definition: a spec's
secret files (its env file, a password) are written into the created container under /run/secrets, 0400 and
owned by its user, before it starts; the spec label is a digest whose secret part is keyed (HMAC with a key of
the state directory), so it changes with them without revealing them.

Routing works as on the local engine: api containers bind their unix socket into a volume the nginx container
also mounts; ``live`` in that volume is a symlink to ``colors/<color>`` and a switch is one atomic rename of it
(of the volume's folder on this host when the engine is local and that folder is found, else an exec of
``mv -T`` in the nginx container), so no reload happens and no request is dropped. Every API call is bounded by
``docker.timeout``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import secrets
import subprocess
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops import appspec
from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.fsutil import atomic_write_json, read_json
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import docker_peek
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.base import COLORS, UnitStatus, is_app, unit_name
from aixsss_ops.runtime.docker_engine import (
    L_COLOR,
    L_PROJECT,
    L_RELEASE,
    L_SERVICE,
    L_SPEC,
    L_VERSION,
    connect,
    engine_host,
)

STOP_EXIT_CODES = (0, 130, 131, 143)  # exit by SIGINT/SIGQUIT/SIGTERM: stopped, not crashed
EXEC_USERS = {"postgres": "postgres"}
HOST_CHECK = ".host-check"  # written through the engine into the run volume, looked for on this host
RUN_FOLDER_RECORD = "run-volume.json"  # in the deploy folder: the run volume's folder on this host


def _parse_time(s: str | None) -> float | None:
    if not s or s.startswith("0001-"):
        return None
    s = s.rstrip("Z")
    head, _, frac = s.partition(".")
    return datetime.fromisoformat(head).replace(tzinfo=UTC).timestamp() + float(f"0.{frac or 0}")


def container_state(attrs: dict) -> tuple[str, str]:
    """(runtime state, description) of a container's inspect data, in the local engine's vocabulary."""
    st = attrs.get("State", {})
    status = st.get("Status")
    health = (st.get("Health") or {}).get("Status")
    if status == "running":
        return "RUNNING", (f"health {health}" if health else "")
    if status == "restarting":
        return "BACKOFF", f"restarting after exit {st.get('ExitCode')}"
    if status == "created":
        return "STOPPED", "created"
    if status == "exited":
        code = st.get("ExitCode")
        if st.get("OOMKilled"):
            return "EXITED", "killed: out of memory"
        if code in STOP_EXIT_CODES:
            return "STOPPED", f"stopped (exit {code})"
        return "EXITED", f"exited {code}" + (f": {st['Error']}" if st.get("Error") else "")
    if status == "dead":
        return "FATAL", "dead"
    return "STOPPED", status or ""


class DockerRuntime:
    def __init__(self, cfg: OpsConfig, layout: Layout):
        self.cfg = cfg
        self.layout = layout
        self._client = None
        self._starting: dict[str, tuple[threading.Thread, list[BaseException]]] = {}

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.cfg)
        return self._client

    # -- finding containers --
    def _filters(self, service: str | None = None, color: str | None = None) -> dict:
        labels = [f"{L_PROJECT}={self.cfg.project}"]
        if service:
            labels.append(f"{L_SERVICE}={service}")
        if color:
            labels.append(f"{L_COLOR}={color}")
        return {"label": labels}

    def containers(self, service: str | None = None, color: str | None = None) -> list:
        from docker.errors import NotFound

        from aixsss_ops.runtime.docker_engine import unreachable

        for attempt in range(5):
            try:
                found = self.client.containers.list(all=True, filters=self._filters(service, color))
                break
            except NotFound:  # one was removed between the listing and its inspection (a deploy replacing it)
                if attempt == 4:
                    raise
            except Exception as e:  # requests/docker errors: the engine went away between calls
                if _is_connection_error(e):
                    raise unreachable(self.cfg, e) from None
                raise
        if service and not is_app(service):
            found = [c for c in found if not c.labels.get(L_COLOR)]
        return found

    def find(self, service: str, color: str | None = None):
        if is_app(service) and color not in COLORS:
            unit_name(service, color)  # raises the usual error
        found = self.containers(service, color)
        if not found:
            return None
        return max(found, key=lambda c: c.attrs.get("Created", ""))

    def _need(self, service: str, color: str | None = None):
        c = self.find(service, color)
        if c is None:
            raise OpsError(
                f"the {unit_name(service, color)} container does not exist", hint="run 'aixsss-ops stack up' to create it"
            )
        return c

    # -- creating containers (used by define_app and the docker stack) --
    def secrets(self) -> dict[str, str]:
        from aixsss_ops.context.embedded import ensure_secrets

        return specs.secret_values(self.cfg, ensure_secrets(self.layout))

    def secret_files(self, spec: specs.ContainerSpec) -> dict[str, bytes]:
        """The contents of ``spec``'s secret files: its env file as it is on disk, one secret value, a file of the
        store's HTTPS certificate, or pgBackRest's config."""
        kinds = {kind for kind, _ in spec.secrets.values()}
        values = self.secrets() if "var" in kinds else {}
        if "tls" in kinds:  # the certificate checked (and made when due) once for all its files
            from aixsss_ops.runtime.pgbackrest_repo import ensure_tls

            tls = ensure_tls(self.cfg, self.layout, network=True)
        out: dict[str, bytes] = {}
        for target, (kind, name) in spec.secrets.items():
            if kind == "env_file":
                path = self.layout.env_file(name)
                try:
                    out[target] = path.read_bytes()
                except FileNotFoundError:
                    raise UsageError(f"env file not found: {path}", hint="run 'aixsss-ops stack up'") from None
            elif kind == "tls":
                out[target] = tls[name].read_bytes()
            elif kind == "pgbackrest":
                out[target] = specs.pgbackrest_conf(self.cfg).encode()
            else:
                out[target] = values[name].encode()
        return out

    def _label_key(self) -> bytes:
        """The key of the secrets' part of the spec label (context/embedded.py)."""
        from aixsss_ops.context.embedded import label_key

        return label_key(self.layout)

    def spec_digest(self, spec: specs.ContainerSpec, files: dict[str, bytes] | None = None) -> str:
        files = self.secret_files(spec) if files is None else files
        mac = ""
        if files:
            h = hmac.new(self._label_key(), digestmod=hashlib.sha256)
            for target in sorted(files):
                h.update(target.encode() + b"\0" + hashlib.sha256(files[target]).digest())
            mac = h.hexdigest()
        return spec.digest(mac)

    def create(self, spec: specs.ContainerSpec):
        """Create the container of ``spec`` (not started) and write its secret files into it."""
        import docker

        files = self.secret_files(spec)
        labels = {
            L_PROJECT: self.cfg.project,
            L_SERVICE: spec.service,
            L_SPEC: self.spec_digest(spec, files),
            **({L_COLOR: spec.color} if spec.color else {}),
            **({L_RELEASE: spec.release, L_VERSION: spec.version or ""} if spec.release else {}),
        }
        kw: dict = {}
        if spec.memory:
            kw["mem_limit"] = spec.memory
        if spec.cpus:
            kw["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.init:
            kw["init"] = True
        if spec.healthcheck:
            kw["healthcheck"] = {"test": spec.healthcheck, "interval": 5_000_000_000, "timeout": 3_000_000_000,
                                 "retries": 3, "start_period": 10_000_000_000}
        name = specs.container_name(self.cfg, spec.unit)
        try:
            c = self.client.containers.create(
                spec.image,
                spec.command,
                name=name,
                entrypoint=[],
                user=spec.user or "",
                environment=dict(spec.environment),
                labels=labels,
                ports={f"{cp}/tcp": (ip, hp) for ip, hp, cp in spec.ports},
                volumes={specs.volume_name(self.cfg, k): {"bind": v, "mode": "rw"} for k, v in spec.volumes.items()},
                network=specs.network_name(self.cfg),
                networking_config={
                    specs.network_name(self.cfg): self.client.api.create_endpoint_config(aliases=[spec.unit])
                },
                hostname=spec.unit,
                working_dir=spec.working_dir,
                restart_policy={"Name": spec.restart} if spec.restart != "no" else None,
                stop_signal=spec.stop_signal,
                detach=True,
                **kw,
            )
        except docker.errors.ImageNotFound:
            raise UsageError(
                f"image {spec.image} of {spec.unit} is not on the engine",
                hint="build it with 'aixsss-ops images base' (infra) or 'aixsss-ops images app' (a release)",
            ) from None
        except docker.errors.APIError as e:
            raise OpsError(f"creating {name} failed: {e.explanation or e}") from None
        if files:
            try:
                self._put_secrets(c, spec, files)
            except BaseException:
                with contextlib.suppress(docker.errors.DockerException):
                    c.remove(force=True)
                raise
        return c

    def _put_secrets(self, c, spec: specs.ContainerSpec, files: dict[str, bytes]) -> None:
        """``files`` into ``/run/secrets`` of the created container: 0400, owned by the container's user."""
        import docker

        uid, gid = self._user_ids(c, spec.user or "")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            d = tarfile.TarInfo(specs.SECRETS.name)
            d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
            tar.addfile(d)
            for target, data in sorted(files.items()):
                info = tarfile.TarInfo(f"{specs.SECRETS.name}/{target}")
                info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o400, uid, gid, int(time.time())
                tar.addfile(info, io.BytesIO(data))
        try:
            ok = c.put_archive(str(specs.SECRETS.parent), buf.getvalue())
        except docker.errors.APIError as e:
            ok = False
            detail = e.explanation or str(e)
        else:
            detail = ""
        if not ok:
            raise OpsError(f"writing the secret files of {spec.unit} into its container failed {detail}".rstrip())

    def _user_ids(self, c, user: str) -> tuple[int, int]:
        """Numeric uid and gid of a container's ``user`` (``name``, ``uid`` or ``uid:gid``), from its own
        /etc/passwd and /etc/group when a name is given."""
        name, _, group = user.partition(":")
        if not name:
            return 0, 0
        if name.isdigit() and (not group or group.isdigit()):
            return int(name), int(group or name)

        def table(path: str) -> dict[str, list[str]]:
            stream, _stat = c.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                text = member.read().decode("utf-8", "replace") if member else ""
            return {f[0]: f for f in (line.split(":") for line in text.splitlines()) if len(f) >= 4}

        users = table("/etc/passwd")
        if name not in users and not name.isdigit():
            raise OpsError(f"user {name} of container {c.name} is not in its /etc/passwd")
        uid = int(name) if name.isdigit() else int(users[name][2])
        gid = int(users[name][3]) if name in users else uid
        if group:
            gid = int(group) if group.isdigit() else int(table("/etc/group")[group][2])
        return uid, gid

    def ensure(self, spec: specs.ContainerSpec) -> tuple[object, str | None]:
        """The container of ``spec``, (re)created when missing or different; (container, action or None)."""
        c = self.find(spec.service, spec.color)
        digest = self.spec_digest(spec)
        if c is not None and c.labels.get(L_SPEC) == digest:
            return c, None
        action = "created" if c is None else "recreated"
        if c is not None:
            self._settle(spec.unit, raise_error=False)
            self._remove(c, spec.stop_timeout)
        self._network_alias_check()
        return self.create(spec), action

    def _network_alias_check(self) -> None:
        import docker

        name = specs.network_name(self.cfg)
        try:
            self.client.networks.get(name)
        except docker.errors.NotFound:
            self.client.networks.create(name, driver="bridge", labels={L_PROJECT: self.cfg.project})

    def _remove(self, c, timeout: int) -> None:
        import docker

        try:
            if c.status == "running":
                c.stop(timeout=timeout)
            c.remove(force=True)
        except docker.errors.NotFound:
            pass

    def app_specs(self, color: str, release: str, version: str) -> list[specs.ContainerSpec]:
        from aixsss_ops.runtime.docker_images import app_tag

        return specs.app_processes(self.cfg, color, release, version, app_tag(self.cfg, release))

    def ensure_app_image(self, source: Path, version: str, say=None) -> str:
        from aixsss_ops.runtime import docker_images

        return docker_images.build_app(self.client, self.cfg, source, version, say or (lambda _m: None))["image"]

    def build_release(self, release: Path, version: str, say) -> None:
        """The release's build steps run in a build container; its image is the release's app image, and the web
        build comes back into ``release`` for the proxy (see runtime/docker_build.py)."""
        from aixsss_ops.runtime import docker_build

        image = self.ensure_app_image(release, version, say)
        if not (release / self.cfg.app.web_root).exists():  # the image outlived an earlier folder of the release
            docker_build.web_from_image(self.client, image, self.cfg, release)

    # -- the protocol --
    def define_app(self, color: str, source: Path, version: str) -> None:
        """The containers of ``color``'s processes; a container of the color the description no longer has (a role
        removed, a count lowered) is removed."""
        self.ensure_app_image(source, version)
        wanted = self.app_specs(color, source.name, version)
        for spec in wanted:
            self.ensure(spec)
        names = {s.service for s in wanted}
        for c in self.containers(color=color):
            if c.labels.get(L_SERVICE) not in names:
                self._remove(c, self.cfg.docker.stop_timeout)

    def start(self, service: str, color: str | None = None, detach: bool = False) -> None:
        """Start without waiting (the protocol's contract): the engine's start call (~0.2-0.7 s of network and
        cgroup set-up) runs beside the caller, ``state`` reads STARTING until it returned and raises its error if it
        failed; ``stop`` and the end of the process wait for it. ``detach``: the call is sent and not waited for
        (``_post_unanswered``): the engine carries the start through whether or not anyone still listens."""
        unit = unit_name(service, color)
        self._settle(unit, raise_error=False)
        if detach:
            with contextlib.suppress(LookupError):  # on a unix socket: sent without the SDK
                attrs = self._own(unit)
                if attrs is not None and (attrs["State"].get("Status") == "running"
                                          or docker_peek.post_unanswered(self.cfg, attrs["Id"], "start") != 404):
                    return
        c = self._need(service, color)
        if c.status == "running":
            return
        if detach:
            try:
                self._post_unanswered(c, "start", {})
            except Exception as e:
                raise self._start_error(unit, e) from None
            return
        errors: list[BaseException] = []
        t = threading.Thread(target=self._start_now, args=(unit, c.id, errors), name=f"start {unit}", daemon=False)
        self._starting[unit] = (t, errors)
        t.start()

    def _start_now(self, unit: str, container_id: str, errors: list[BaseException]) -> None:
        try:
            self.client.api.start(container_id)
        except BaseException as e:  # noqa: BLE001 - handed to whoever settles this start
            errors.append(self._start_error(unit, e))

    @staticmethod
    def _start_error(unit: str, e: BaseException) -> BaseException:
        """The error ``e`` of starting ``unit`` in the tool's terms when it is the engine's refusal."""
        import docker

        if not isinstance(e, docker.errors.APIError):
            return e
        msg = str(e.explanation or e)
        if "port is already allocated" in msg or "address already in use" in msg:
            return UsageError(f"{unit} cannot start: a published port is taken: {msg}")
        return OpsError(f"starting {unit} failed: {msg}")

    def _settle(self, unit: str | None = None, raise_error: bool = True) -> None:
        """Wait for the pending start of ``unit`` (of every unit when None); raise the first error it had."""
        pending = [unit] if unit else list(self._starting)
        first: BaseException | None = None
        for u in pending:
            entry = self._starting.pop(u, None)
            if entry is None:
                continue
            entry[0].join()
            if entry[1] and first is None:
                first = entry[1][0]
        if first is not None and raise_error:
            if isinstance(first, OpsError) or not _is_connection_error(first):
                raise first
            from aixsss_ops.runtime.docker_engine import unreachable

            raise unreachable(self.cfg, first) from None

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None:
        unit = unit_name(service, color)
        self._settle(unit, raise_error=False)  # stopping it anyway
        spec = appspec.spec_of(self.cfg, service) if is_app(service) else None
        timeout = int(spec.stop_timeout) if spec else self.cfg.docker.stop_timeout
        if not wait:
            with contextlib.suppress(LookupError):  # on a unix socket: sent without the SDK
                attrs = self._own(unit)
                if attrs is not None:
                    docker_peek.post_unanswered(self.cfg, attrs["Id"], "stop", {"t": timeout})  # 404: gone already
                return
        import docker

        c = self.find(service, color)
        if c is None:
            if wait:
                self._settle()
            return
        if not wait:
            with contextlib.suppress(docker.errors.NotFound):  # gone already
                self._post_unanswered(c, "stop", {"t": timeout})
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(c.id, timeout=timeout)
        self._settle()  # a blocking call returns with no start of this process still pending

    def _post_unanswered(self, c, action: str, params: dict) -> None:
        """Ask the engine to ``start`` or ``stop`` (SIGTERM or its stop signal, SIGKILL after ``t``) ``c`` without
        waiting for the answer, which comes only once the engine is done: it carries the call through whether or not
        anyone still listens, so a draining worker or a warm worker's start delays no command. An answer within
        20 ms (an error, 304: done already) is read; callers poll ``state``."""
        import requests

        api = self.client.api
        try:
            r = api._post(api._url(f"/containers/{{0}}/{action}", c.id), params=params,
                          timeout=(self.cfg.docker.timeout, 0.02))
        except requests.exceptions.ReadTimeout:
            return  # the request arrived; the engine is carrying it out
        api._raise_for_status(r)

    def state(self, service: str, color: str | None = None) -> str:
        unit = unit_name(service, color)
        entry = self._starting.get(unit)
        if entry is not None:
            if entry[0].is_alive():
                return "STARTING"
            self._settle(unit)  # done: raises what the start met
        with contextlib.suppress(LookupError):  # on a unix socket: one inspect by name, no SDK import
            attrs = self._own(unit)
            return "ABSENT" if attrs is None else container_state(attrs)[0]
        c = self.find(service, color)
        return "ABSENT" if c is None else container_state(c.attrs)[0]

    def _own(self, unit: str) -> dict | None:
        """The inspect data of ``unit``'s container read without the SDK (containers have fixed names), None when
        there is none or that name is another project's. ``LookupError``: ask the SDK."""
        attrs = docker_peek.inspect(self.cfg, specs.container_name(self.cfg, unit))
        return attrs if attrs is not None and _labels(attrs).get(L_PROJECT) == self.cfg.project else None

    def signal(self, service: str, sig: str, color: str | None = None) -> None:
        self._settle(unit_name(service, color))
        self._need(service, color).kill(signal=sig if sig.startswith("SIG") else f"SIG{sig}")

    def status(self) -> list[UnitStatus]:
        out = []
        now = time.time()
        try:  # on a unix socket: without the SDK
            found = docker_peek.containers(self.cfg, [f"{L_PROJECT}={self.cfg.project}"])
        except LookupError:
            found = [c.attrs for c in self.containers()]
        for attrs in found:
            labels = _labels(attrs)
            service, color = labels.get(L_SERVICE, "?"), labels.get(L_COLOR) or None
            state, desc = container_state(attrs)
            started = _parse_time(attrs.get("State", {}).get("StartedAt"))
            out.append(
                UnitStatus(
                    unit=unit_name(service, color) if is_app(service) and color else service,
                    service=service,
                    color=color,
                    state=state,
                    pid=attrs.get("State", {}).get("Pid") or None,
                    uptime_s=int(now - started) if state == "RUNNING" and started else None,
                    description=desc,
                )
            )
        return sorted(out, key=lambda u: u.unit)

    def exec(
        self, service: str, argv: list[str], color: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess:
        """Run a one-off command inside the service's container (as the account the service runs as);
        output comes back as bytes, like LocalRuntime.exec."""
        self._settle(unit_name(service, color))
        c = self._need(service, color)
        if c.status != "running":
            raise OpsError(f"{unit_name(service, color)} is not running: cannot run {argv[0]} in it")
        api = self.client.api
        full = ["timeout", "-k", "5", str(max(1, int(timeout))), *argv]
        old = api.timeout
        api.timeout = max(old or 0, timeout + 30)
        try:
            ex = api.exec_create(c.id, full, user=EXEC_USERS.get(service, ""), stdout=True, stderr=True)
            out, err = api.exec_start(ex["Id"], demux=True)
            code = api.exec_inspect(ex["Id"]).get("ExitCode")
        finally:
            api.timeout = old
        if code == 124:
            raise OpsError(f"{argv[0]} in {unit_name(service, color)} did not finish within {timeout:.0f}s")
        return subprocess.CompletedProcess(argv, code if code is not None else 1, out or b"", err or b"")

    def logs(self, service: str, color: str | None = None, lines: int = 100) -> str:
        if is_app(service) and color is None:
            raise OpsError(f"{service} runs per color: name one (blue or green)")
        c = self.find(service, color)
        if c is None:
            return ""
        return c.logs(stdout=True, stderr=True, tail=lines).decode("utf-8", "replace")

    def logs_since_start(self, service: str, color: str | None = None) -> str:
        c = self.find(service, color)
        if c is None:
            return ""
        started = _parse_time(c.attrs.get("State", {}).get("StartedAt"))
        kw = {"since": int(started)} if started else {}
        return c.logs(stdout=True, stderr=True, **kw).decode("utf-8", "replace")

    # -- routing: symlinks in the shared run volume --
    def prepare_route(self, color: str, source: Path) -> None:
        release = source.name
        token = secrets.token_hex(16)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            check = tarfile.TarInfo(HOST_CHECK)
            check.size, check.mode = len(token), 0o600
            tar.addfile(check, io.BytesIO(token.encode()))
            web = source / self.cfg.app.web_root
            if web.is_dir():
                tar.add(str(web), arcname=f"web/{release}", filter=_owned_by_root)
            own = self.cfg.app.processes["api"].socket_env
            sock = specs.api_socket(color) if own else nginx.color_socket(specs.RUN, color)
            for name, target in (("api.sock", str(sock)), ("web", str(specs.RUN / "web" / release))):
                info = tarfile.TarInfo(f"colors/{color}/{name}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
        proxy = self._need("proxy")
        if not proxy.put_archive(str(specs.RUN), buf.getvalue()):
            raise OpsError(f"could not prepare the {color} color in the proxy's volume")
        self._record_run_folder(token)

    def _record_run_folder(self, token: str) -> None:
        """Record the run volume's folder when it is a folder of this host: the engine's unix socket names the
        engine, and the file ``prepare_route`` just wrote through the engine is there with its random content."""
        record = self.layout.deploy_dir / RUN_FOLDER_RECORD
        folder = None
        if docker_peek.socket_path(self.cfg):
            mountpoint = self.client.api.inspect_volume(specs.volume_name(self.cfg, "run")).get("Mountpoint") or ""
            with contextlib.suppress(OSError):
                if mountpoint and (Path(mountpoint) / HOST_CHECK).read_text() == token:
                    folder = mountpoint
        if folder is None:
            record.unlink(missing_ok=True)
            return
        (Path(folder) / HOST_CHECK).unlink(missing_ok=True)
        atomic_write_json(record, {"engine": engine_host(self.cfg), "volume": specs.volume_name(self.cfg, "run"),
                                   "folder": folder}, 0o600)

    def run_folder(self) -> Path | None:
        """The run volume as a folder of this host (recorded by ``prepare_route``), None when the engine keeps it
        elsewhere or the record is not for this engine and volume any more."""
        rec = read_json(self.layout.deploy_dir / RUN_FOLDER_RECORD) or {}
        if rec.get("engine") != engine_host(self.cfg) or rec.get("volume") != specs.volume_name(self.cfg, "run"):
            return None
        folder = Path(rec.get("folder") or "/nonexistent")
        return folder if (folder / "colors").is_dir() else None

    def route(self, color: str) -> None:
        folder = self.run_folder()
        if folder is not None:  # the rename nginx sees at once, without an exec in its container (~0.1 s)
            nginx.switch_live(folder, color)
            return
        self._settle("proxy")
        proxy = self._need("proxy")
        run = specs.RUN
        if proxy.status != "running":
            raise OpsError("the proxy container is not running: cannot switch colors", hint="run 'aixsss-ops stack up'")
        script = (
            f'[ -d {run}/colors/{color} ] || {{ echo "{color} was never prepared" >&2; exit 3; }}; '
            f"ln -sfn colors/{color} {run}/.live.tmp && mv -T {run}/.live.tmp {run}/live"
        )
        r = self.exec("proxy", ["sh", "-c", script], timeout=30)
        if r.returncode != 0:
            raise OpsError(f"switching the proxy to {color} failed: {r.stderr.decode(errors='replace').strip()}")

    def routed_color(self) -> str | None:
        """The target of the ``live`` symlink, read with the Engine API's stat of a path (``HEAD
        /containers/{id}/archive``: a header, no archive, ~2 ms against ~40 ms for reading it), or from the host's
        folder of the volume."""
        folder = self.run_folder()
        if folder is not None:
            return nginx.live_color(folder)
        proxy = self.find("proxy")
        if proxy is None:
            return None
        api = self.client.api
        r = api.head(api._url("/containers/{0}/archive", proxy.id), params={"path": str(specs.RUN / "live")})
        if r.status_code == 404:
            return None
        api._raise_for_status(r)
        stat = json.loads(base64.b64decode(r.headers.get("X-Docker-Container-Path-Stat") or "e30="))
        target = stat.get("linkTarget") or ""
        return Path(target).name if target else None


def _labels(attrs: dict) -> dict:
    return (attrs.get("Config") or {}).get("Labels") or {}


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 if info.isfile() else 0o555
    return info


def _is_connection_error(e: BaseException) -> bool:
    import requests

    return isinstance(e, requests.ConnectionError | requests.Timeout | ConnectionError)
