"""The docker engine behind the runtime protocol, through the Engine API (the ``docker`` SDK).

Containers are found again by their labels (project, service, color, release): the engine is the only record
of what runs, so nothing local can disagree with it. Routing works as on the local engine: api containers bind
their unix socket into a volume the nginx container also mounts; ``live`` in that volume is a symlink to
``colors/<color>`` and a switch is one atomic rename of it (an exec of ``mv -T`` in the nginx container), so no
reload happens and no request is dropped. Every API call is bounded by ``docker.timeout``.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import tarfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from aixsss_ops import envfile
from aixsss_ops.config import OpsConfig
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.runtime.base import APP, COLORS, UnitStatus, unit_name
from aixsss_ops.runtime.docker_engine import L_COLOR, L_PROJECT, L_RELEASE, L_SERVICE, L_SPEC, L_VERSION, connect
from aixsss_ops.stack import docker_specs as specs
from aixsss_ops.stack.layout import Layout

STOP_EXIT_CODES = (0, 130, 131, 143)  # exit by SIGINT/SIGQUIT/SIGTERM: stopped, not crashed
EXEC_USERS = {"postgres": "postgres"}


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
        self._stoppers: list[threading.Thread] = []

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
        from aixsss_ops.runtime.docker_engine import unreachable

        try:
            found = self.client.containers.list(all=True, filters=self._filters(service, color))
        except Exception as e:  # requests/docker errors: the engine went away between calls
            if _is_connection_error(e):
                raise unreachable(self.cfg, e) from None
            raise
        if service and service not in APP:
            found = [c for c in found if not c.labels.get(L_COLOR)]
        return found

    def find(self, service: str, color: str | None = None):
        if service in APP and color not in COLORS:
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
        from aixsss_ops.stack import envgen

        return specs.secret_values(self.cfg, envgen.stack_secrets(self.layout))

    def env_files(self, spec: specs.ContainerSpec) -> dict[str, dict[str, str]]:
        return {name: envfile.read(self.layout.env_file(name)) for name in spec.env_files}

    def spec_digest(self, spec: specs.ContainerSpec) -> str:
        return spec.digest(self.secrets(), self.env_files(spec))

    def create(self, spec: specs.ContainerSpec):
        """Create the container of ``spec`` (not started). The environment is passed without being printed."""
        import docker

        env = specs.resolve_env(spec, self.secrets(), self.env_files(spec))
        labels = {
            L_PROJECT: self.cfg.project,
            L_SERVICE: spec.service,
            L_SPEC: spec.digest(self.secrets(), self.env_files(spec)),
            **({L_COLOR: spec.color} if spec.color else {}),
            **({L_RELEASE: spec.release, L_VERSION: spec.version or ""} if spec.release else {}),
        }
        kw: dict = {}
        if spec.memory:
            kw["mem_limit"] = spec.memory
        if spec.cpus:
            kw["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.healthcheck:
            kw["healthcheck"] = {"test": spec.healthcheck, "interval": 5_000_000_000, "timeout": 3_000_000_000,
                                 "retries": 3, "start_period": 10_000_000_000}
        name = specs.container_name(self.cfg, spec.unit)
        try:
            return self.client.containers.create(
                spec.image,
                spec.command,
                name=name,
                entrypoint=[],
                user=spec.user or "",
                environment=env,
                labels=labels,
                ports={f"{cp}/tcp": (ip, hp) for ip, hp, cp in spec.ports},
                volumes={specs.volume_name(self.cfg, k): {"bind": v, "mode": "rw"} for k, v in spec.volumes.items()},
                network=specs.network_name(self.cfg),
                networking_config={
                    specs.network_name(self.cfg): self.client.api.create_endpoint_config(aliases=[spec.unit])
                },
                hostname=spec.unit,
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

    def ensure(self, spec: specs.ContainerSpec) -> tuple[object, str | None]:
        """The container of ``spec``, (re)created when missing or different; (container, action or None)."""
        c = self.find(spec.service, spec.color)
        digest = self.spec_digest(spec)
        if c is not None and c.labels.get(L_SPEC) == digest:
            return c, None
        action = "created" if c is None else "recreated"
        if c is not None:
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

        image = app_tag(self.cfg, release)
        return [specs.api(self.cfg, color, release, version, image), specs.worker(self.cfg, color, release, version, image)]

    def ensure_app_image(self, source: Path, version: str) -> str:
        from aixsss_ops.runtime import docker_images

        return docker_images.build_app(self.client, self.cfg, source, version, lambda _m: None)["image"]

    # -- the protocol --
    def define_app(self, color: str, source: Path, version: str) -> None:
        self.ensure_app_image(source, version)
        for spec in self.app_specs(color, source.name, version):
            self.ensure(spec)

    def start(self, service: str, color: str | None = None) -> None:
        import docker

        c = self._need(service, color)
        try:
            c.start()
        except docker.errors.APIError as e:
            msg = str(e.explanation or e)
            if "port is already allocated" in msg or "address already in use" in msg:
                raise UsageError(f"{unit_name(service, color)} cannot start: a published port is taken: {msg}") from None
            raise OpsError(f"starting {unit_name(service, color)} failed: {msg}") from None

    def stop(self, service: str, color: str | None = None, wait: bool = True) -> None:
        import docker

        c = self.find(service, color)
        if c is None:
            return
        timeout = int(self.cfg.supervisor.stop_timeout) if service == "worker" else self.cfg.docker.stop_timeout
        if not wait:
            # dockerd escalates to SIGKILL after the timeout; the call returns when the container is gone, so run it
            # beside us (joined before the process exits) and let callers poll state()
            t = threading.Thread(target=self._stop_quietly, args=(c, timeout), daemon=False)
            t.start()
            self._stoppers.append(t)
            return
        with contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(c.id, timeout=timeout)

    def _stop_quietly(self, c, timeout: int) -> None:
        import docker

        from aixsss_ops.runtime.docker_engine import connect

        with contextlib.suppress(docker.errors.DockerException, OpsError, OSError):
            connect(self.cfg).api.stop(c.id, timeout=timeout)

    def state(self, service: str, color: str | None = None) -> str:
        c = self.find(service, color)
        return "ABSENT" if c is None else container_state(c.attrs)[0]

    def signal(self, service: str, sig: str, color: str | None = None) -> None:
        self._need(service, color).kill(signal=sig if sig.startswith("SIG") else f"SIG{sig}")

    def status(self) -> list[UnitStatus]:
        out = []
        now = time.time()
        for c in self.containers():
            service, color = c.labels.get(L_SERVICE, "?"), c.labels.get(L_COLOR) or None
            state, desc = container_state(c.attrs)
            started = _parse_time(c.attrs.get("State", {}).get("StartedAt"))
            out.append(
                UnitStatus(
                    unit=unit_name(service, color) if service in APP and color else service,
                    service=service,
                    color=color,
                    state=state,
                    pid=c.attrs.get("State", {}).get("Pid") or None,
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
        if service in APP and color is None:
            raise OpsError(f"{service} runs per color: name one (blue or green)")
        c = self.find(service, color)
        if c is None:
            return ""
        return c.logs(stdout=True, stderr=True, tail=lines).decode("utf-8", "replace")

    # -- routing: symlinks in the shared run volume, changed inside the nginx container --
    def prepare_route(self, color: str, source: Path) -> None:
        release = source.name
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            web = source / "web"
            if web.is_dir():
                tar.add(str(web), arcname=f"web/{release}", filter=_owned_by_root)
            for name, target in (("api.sock", str(specs.api_socket(color))), ("web", str(specs.RUN / "web" / release))):
                info = tarfile.TarInfo(f"colors/{color}/{name}")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
        proxy = self._need("proxy")
        if not proxy.put_archive(str(specs.RUN), buf.getvalue()):
            raise OpsError(f"could not prepare the {color} color in the proxy's volume")

    def route(self, color: str) -> None:
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
        import docker

        proxy = self.find("proxy")
        if proxy is None:
            return None
        try:
            stream, _stat = proxy.get_archive(str(specs.RUN / "live"))
            data = b"".join(stream)
        except docker.errors.NotFound:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                if m.issym():
                    return Path(m.linkname).name
        return None


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode |= 0o444 if info.isfile() else 0o555
    return info


def _is_connection_error(e: BaseException) -> bool:
    import requests

    return isinstance(e, requests.ConnectionError | requests.Timeout | ConnectionError)
