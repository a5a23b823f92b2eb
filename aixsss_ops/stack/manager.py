"""The embedded stack, engine-independent: what runs, readiness, port checks, status, stop order, logs.

Everything here talks to the ``Runtime`` protocol. The engines (stack/local_stack.py: supervised processes,
stack/docker_stack.py: containers) add only what differs: how services are defined and brought up, how the
object store's volumes are probed, what the engine itself is. ``stack.engines.open_stack`` picks the engine.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

import msgspec

from aixsss_ops import appspec, envfile, probes, releases
from aixsss_ops.config import AppSection, ProcessSpec
from aixsss_ops.context import embedded
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.context.deploystate import Colors, ColorSpec
from aixsss_ops.context.envgen import EXTERNAL_VARS, external_settings
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.output import scrubber, secret_values
from aixsss_ops.poll import poll_until
from aixsss_ops.runtime.base import (
    COLORS,
    FAILED_STATES,
    STOPPED_STATES,
    Runtime,
    api_port,
    is_app,
    not_stopped,
    unit_name,
    wait_stopped,
)
from aixsss_ops.s3 import S3Target, ensure_bucket
from aixsss_ops.stack.postgres import ensure_role_and_database

Progress = Callable[[str], None]
# what a PostgreSQL server says when it answers but will not take the credentials (or database) given
_PG_REFUSED = re.compile(r"authentication failed|no pg_hba\.conf entry|does not exist|permission denied|"
                         r"password must be supplied|not permitted to log in", re.I)
_S3_REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken")
# after the app; Postgres before the store and Redis (its WAL archiving may write to a bucket of the store)
INFRA_STOP_ORDER = (("proxy",), ("postgres",), ("s3", "redis"))


class Unit(Protocol):
    """A service definition of either engine (a supervisord program, a container spec)."""

    service: str
    color: str | None

    @property
    def unit(self) -> str: ...

    def port_labels(self) -> dict[str, int]: ...


@dataclass
class ServiceReport:
    unit: str
    state: str
    healthy: bool | None
    detail: str
    ports: dict[str, int] = field(default_factory=dict)
    pid: int | None = None
    uptime_s: int | None = None
    role: str = "infra"  # infra, external (a managed service: reached, not run), active (the live color) or idle
    # (the other color: informational)


@dataclass
class StackReport:
    state_dir: str
    url: str
    active_color: str | None
    services: list[ServiceReport]
    actions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what `stack up` left as it was, and why
    nodes: list[dict] = field(default_factory=list)  # a cluster's nodes and what runs on each (swarm)

    @property
    def healthy(self) -> bool:
        return bool(self.services) and all(s.healthy for s in self.services if s.role != "idle")

    def to_dict(self) -> dict:
        return {**asdict(self), "healthy": self.healthy}


def _probed(d: Unit, state: str) -> bool:
    """Whether ``d``'s probe decides its readiness in ``state``: when running, and for a process of the app also while
    the engine's start check runs (``Stack.ready`` then asks a readiness that proves it works)."""
    return state == "RUNNING" or (state == "STARTING" and is_app(d.service))


def _check_redis(url: str, timeout: float = 2.0) -> tuple[str, str]:
    """AUTH (with the URL's user and password) and PING: ``("ok" | "refused" | "down", detail)``."""
    import redis

    r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        r.ping()
        return "ok", "answers PING"
    except redis.AuthenticationError as e:
        return "refused", f"AUTH refused ({e})"
    except redis.ResponseError as e:  # NOAUTH / WRONGPASS / NOPERM from a server that took the connection
        refused = str(e).split(" ", 1)[0] in ("NOAUTH", "WRONGPASS", "NOPERM")
        return ("refused" if refused else "down"), f"{type(e).__name__}: {e}"
    except (redis.RedisError, OSError) as e:
        return "down", f"{type(e).__name__}: {e}"
    finally:
        r.close()


def color_spec(release: releases.Release) -> ColorSpec:
    return ColorSpec(release=release.id, source=str(release.path), version=release.version)


def app_description(app: AppSection) -> dict:
    """What a color of the app runs with, from ops.toml's ``[app]``: its processes (command, cwd, env, readiness,
    stop, count) and the folder of its web build, as plain data (the keys as ops.toml writes them)."""
    return {"processes": msgspec.to_builtins(app.processes), "web_root": app.web_root}


def described_app(app: AppSection, description: Mapping) -> AppSection:
    """``app`` with the processes and web folder of a recorded ``description``; a ValueError when it is not one
    (its processes do not validate)."""
    try:
        processes = msgspec.convert(description["processes"], dict[str, ProcessSpec])
        web_root = msgspec.convert(description.get("web_root", app.web_root), str)
        described = app.model_copy(update={"processes": processes, "web_root": web_root})
        described.__post_init__()  # what ops.toml's [app] must hold (an api, one port) holds for it too
        return described
    except (KeyError, TypeError, msgspec.ValidationError) as e:
        raise ValueError(f"{type(e).__name__}: {e}") from None


class Stack:
    runtime: Runtime

    def __init__(self, dep: Deployment):
        self.dep = dep
        self.cfg = dep.cfg
        self.layout = dep.layout
        self.deploy_state = dep.deploy_state

    # -- what the engine defines --
    def infra_defs(self) -> list[Unit]:
        raise NotImplementedError

    def app_defs(self, color: str) -> list[Unit]:
        raise NotImplementedError

    def up(self, progress: Progress | None = None, infra_only: bool = False) -> StackReport:
        """Start or repair the stack; ``infra_only``: postgres, redis and s3 alone (no data preparation, no app, no
        proxy)."""
        raise NotImplementedError

    def engine_problem(self) -> str | None:
        """Why what runs the services cannot be asked (None when it answers)."""
        raise NotImplementedError

    def proxy_config_check(self) -> tuple[bool, str, str | None]:
        """``nginx -t`` of the proxy's config: (accepted, message, fix)."""
        raise NotImplementedError

    def _probe_s3_volumes(self) -> tuple[bool, str]:
        raise NotImplementedError

    def _redis_password(self) -> str | None:
        return (embedded.read_secrets(self.layout) or {}).get("redis_password")

    def _engine_running(self) -> bool:
        return True

    def _absent_detail(self, state: str) -> str:
        """What ``status`` says of a unit the engine does not know."""
        return ""

    def _engine_down(self) -> list[str]:
        return []

    def _ports_on_this_host(self) -> bool:
        return True

    # -- what each color runs (see aixsss_ops.deploy) --
    def colors(self, say: Progress | None = None) -> Colors:
        """The deploy state; on the very first use, blue runs a release built from the configured app source."""
        state = self.deploy_state.load()
        if not state:
            release, _ = releases.build(self.cfg.app_source, self.cfg.app.version, self.layout.releases,
                                        steps=self.cfg.app.build, builder=self.runtime.build_release, say=say)
            state = Colors("blue", {"blue": color_spec(release)})
            self.record_description(release.id)  # blue runs it with the description of ops.toml
        return state

    def record_description(self, release_id: str) -> None:
        """Record the app description of ops.toml as the one ``release_id`` is deployed with."""
        self.deploy_state.save_description(release_id, app_description(self.cfg.app))

    @contextmanager
    def as_deployed(self, release_id: str) -> Iterator[str | None]:
        """Within it, the configuration (``cfg.app``, which the runtime, readiness and deploy read) describes the
        app's processes as recorded for ``release_id`` when it was deployed; it yields None, or a warning when
        there is no usable record and the description of ops.toml stands."""
        note = None
        try:
            recorded = self.deploy_state.description(release_id)
            app = described_app(self.cfg.app, recorded) if recorded is not None else None
        except (OpsError, ValueError) as e:
            app = None
            note = (f"the app description release {release_id} was deployed with is unusable "
                    f"({getattr(e, 'message', e)}): it runs with the current description in ops.toml")
        if app is None and note is None:
            note = (f"release {release_id} has no record of the app description it was deployed with (an earlier "
                    "aixsss-ops deployed it): it runs with the current description in ops.toml")
        current = self.cfg.app
        if app is not None:
            self.cfg.app = app
        try:
            yield note
        finally:
            self.cfg.app = current

    def live_color(self) -> str | None:
        """The color the proxy sends traffic to (its ``live`` route), whatever colors.json says."""
        return self.runtime.routed_color()

    @property
    def url(self) -> str:
        return self.dep.url

    def admin_url(self, database: str = "postgres") -> str:
        return self.dep.embedded_admin_url(database)

    def app_database_url(self) -> str:
        """The app's database as the app's role: the embedded one, or the external one its DATABASE_URL names."""
        if "postgres" in self.cfg.external:
            return self.dep.database.value
        return embedded.app_url(self.cfg, embedded.ensure_secrets(self.layout))

    def s3_target(self) -> S3Target:
        if "s3" in self.cfg.external:
            return self.dep.s3
        s = self.cfg.s3
        return S3Target(f"http://{self.cfg.host}:{self.cfg.ports.s3}", s.access_key, s.secret_key.get_secret_value(),
                        s.region)

    def unit_state(self, unit: str) -> str:
        service, _, color = unit.partition("-")
        return self.runtime.state(service, color or None)

    # -- the steps of ``up`` both engines share --
    def _check_ports(self, defs: list[Unit]) -> None:
        seen: dict[int, str] = {}
        for d in defs:
            for label, port in d.port_labels().items():
                if port in seen:
                    raise UsageError(f"port {port} is configured for both {seen[port]} and {label}")
                seen[port] = label
        if not self._ports_on_this_host():
            return  # a remote engine publishes on its own machine: it reports a taken port at start
        for d in defs:
            if self.unit_state(d.unit) in ("RUNNING", "STARTING", "BACKOFF"):
                continue
            for label, port in d.port_labels().items():
                if not probes.port_free(self.cfg.host, port):
                    raise UsageError(
                        f"port {port} ({label}) is already in use on {self.cfg.host}",
                        hint=f"stop what holds it, or change ports in {self.cfg.config_path or 'ops.toml'}",
                    )

    def _prepare_data(self, spec: ColorSpec, say: Progress) -> list[str]:
        """The app's role and database (an external server's are the operator's), its migrations, its bucket:
        what the app needs before it starts. The external services answered ``check_external`` already."""
        actions = []
        if "postgres" not in self.cfg.external:
            sec = embedded.ensure_secrets(self.layout)
            created = ensure_role_and_database(self.admin_url(), self.cfg.postgres.database, self.cfg.postgres.user,
                                               sec["postgres_app_password"])
            actions += [f"created {c}" for c in created]
        actions += [f"applied migration {m}" for m in self._migrate(spec, say)]
        bucket = self.dep.bucket if "s3" in self.cfg.external else self.cfg.s3.bucket
        if ensure_bucket(self.s3_target(), bucket):
            actions.append(f"created bucket {bucket}")
        return actions

    # -- external (managed) services: reached, never run --
    def external_url(self, service: str) -> str:
        """Where the external ``service`` is: its DATABASE_URL, REDIS_URL or S3 endpoint (with credentials)."""
        return {"postgres": lambda: self.dep.database.value, "redis": lambda: self.dep.redis.value,
                "s3": lambda: self.dep.s3.endpoint}[service]()

    def _external_now(self, service: str) -> dict[str, str]:
        """The settings naming the external ``service`` as this command resolves them (flag, environment, env
        files): the variables of ``envgen.EXTERNAL_VARS``."""
        if service == "s3":
            t = self.dep.s3
            return {"S3_ENDPOINT": t.endpoint, "S3_ACCESS_KEY": t.access_key, "S3_SECRET_KEY": t.secret_key,
                    "S3_REGION": t.region, "S3_BUCKET": self.dep.bucket}
        return {EXTERNAL_VARS[service][0][0]: self.external_url(service)}

    def _check_external(self, service: str, settings: Mapping[str, str]) -> tuple[str, str]:
        """Ask the external ``service`` named by ``settings``, with their credentials: ``("ok" | "refused" |
        "down", detail)``. Refused: it answers but will not take the credentials (or the database, bucket) given,
        which waiting does not mend; down: it does not answer (yet)."""
        if service == "s3":
            return self._check_external_s3(settings)
        url = settings[EXTERNAL_VARS[service][0][0]]
        where = urlsplit(url).netloc.rpartition("@")[2]  # host:port, never the credentials
        if service == "postgres":
            from aixsss_ops.dburl import parse_database_url

            ok, detail = probes.postgres(parse_database_url(url).conninfo)
            state = "ok" if ok else ("refused" if _PG_REFUSED.search(detail) else "down")
        else:
            state, detail = _check_redis(url)
        return state, f"external {where}: {detail}"

    def _check_external_s3(self, settings: Mapping[str, str]) -> tuple[str, str]:
        import urllib3
        from minio.error import S3Error

        endpoint = settings["S3_ENDPOINT"]
        where = urlsplit(endpoint).netloc.rpartition("@")[2]
        bucket = settings.get("S3_BUCKET") or self.cfg.s3.bucket
        target = S3Target(endpoint, settings["S3_ACCESS_KEY"], settings["S3_SECRET_KEY"],
                          settings.get("S3_REGION") or self.cfg.s3.region)
        try:
            exists = target.client(timeout=3.0).bucket_exists(bucket)  # a signed request: the keys are checked
        except S3Error as e:
            status = getattr(e.response, "status", 0) or 0
            refused = status in (401, 403) or e.code in _S3_REFUSED
            return ("refused" if refused else "down"), f"external {where}: {e.code}: {e.message}"
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            return "down", f"external {where}: {type(e).__name__}: {e}"
        return "ok", f"external {where}: answers (bucket {bucket} {'exists' if exists else 'to be created'})"

    def probe_external(self, service: str) -> tuple[bool, str]:
        try:
            settings = self._external_now(service)
        except OpsError as e:
            return False, e.message
        state, detail = self._check_external(service, settings)
        return state == "ok", detail

    def check_external(self, say: Progress) -> None:
        """Before anything is written (the env files above all): every service ops.toml marks ``external`` answers
        with the settings this ``stack up`` will write (the environment's, else the env files'), credentials
        included; an error naming the first that does not, the env files left as they were."""
        if not self.cfg.external:
            return
        old = {name: envfile.read(path) for name in ("api", "worker")
               if (path := self.layout.env_file(name)).exists()}
        settings = external_settings(self.cfg, old, self.dep.environ)  # one naming nothing: the usage error
        scrubber.add(*secret_values({"external": settings}))
        for service in self.cfg.external:
            self._wait_external(service, say, settings)

    def _wait_external(self, service: str, say: Progress, settings: Mapping[str, str]) -> None:
        """Return once the external ``service`` named by ``settings`` answers; an error naming it otherwise, at once
        when it refuses the credentials."""
        last = ("down", "")

        def answered() -> bool:
            nonlocal last
            last = self._check_external(service, settings)
            return last[0] != "down"

        poll_until(answered, self.cfg.supervisor.start_timeout, interval=0.5)
        state, detail = last
        required = EXTERNAL_VARS[service][0]
        where = f"(the environment of this command, else {self.layout.env_file('api')})"
        if state == "refused":
            what = {"postgres": "the role, password and database in DATABASE_URL",
                    "redis": "the user and password in REDIS_URL"}.get(service, "S3_ACCESS_KEY and S3_SECRET_KEY")
            raise OpsError(f"the external {service} refuses the credentials given: {detail}",
                           hint=f"check {what} {where}; an external service is the operator's: aixsss-ops neither "
                                "starts it nor changes its accounts")
        if state == "down":
            raise OpsError(f"the external {service} does not answer: {detail}",
                           hint=f"check the address in {required[0]} {where} and that this machine may reach it; "
                                "an external service is not started by aixsss-ops")
        say(f"external {service} answers")

    def _migrate(self, spec: ColorSpec, say: Progress) -> list[str]:
        from aixsss_ops.migrate import deploy

        result = deploy(self.app_database_url(), appspec.migrations_dir(self.cfg, spec.path),
                        statement_lock_timeout=self.cfg.deploy.migration_statement_lock_timeout)
        if result.applied:
            say(f"applied {len(result.applied)} migration(s)")
        return list(result.applied)

    # -- readiness --
    def probe(self, d: Unit) -> tuple[bool, str]:
        c = self.cfg
        if d.service == "postgres":
            from aixsss_ops.dburl import parse_database_url

            return probes.postgres(parse_database_url(self.admin_url()).conninfo)
        if d.service == "redis":
            return probes.redis_ping(c.host, c.ports.redis, password=self._redis_password())
        if d.service == "s3":
            ok, detail = probes.http(f"http://{c.host}:{c.ports.s3}/", expect_any_status=True)
            return self._probe_s3_volumes() if ok else (ok, detail)
        if d.service == "proxy":
            ok, body = probes.api_health(f"{self.url}/api/health")
            return ok, (f"serving {body.get('color')} {body.get('version')}" if ok
                        else f"/api/health through the proxy: {body}")
        if is_app(d.service):
            return self.ready(d.service, d.color)
        state = self.unit_state(d.unit)
        return state == "RUNNING", state.lower()

    def ready(self, role: str, color: str) -> tuple[bool, str]:
        """Whether the process ``role`` of ``color`` shows the readiness its description asks (ops.toml
        ``app.processes.<role>.ready``): an HTTP answer on its port, a log line since its start, a Redis client
        name, or else running for a few seconds."""
        c = self.cfg
        spec = appspec.spec_of(c, role)
        if spec is None:
            return False, f"{role} is not a process of the app description"
        r = spec.ready
        state = self.runtime.state(role, color)
        # a readiness that proves the process works counts while the engine's start check still runs (supervisord's
        # STARTING, its first second): the answer proves more than that second would
        if state != "RUNNING" and not (state == "STARTING" and r.proves):
            return False, state.lower()
        if r.http:
            ok, detail, body = probes.http_ready(f"http://{c.host}:{api_port(c, color)}{r.http}", r.status,
                                                 r.json_fields)
            version = f", version {body['version']}" if ok and body.get("version") else ""
            return ok, f"{r.http}: {detail}{version}"
        if r.log:
            found = re.search(r.log, self.runtime.logs_since_start(role, color), re.M)
            return (True, f"logged {found.group(0)!r}") if found else (False, f"no log line matches {r.log!r} yet")
        if r.redis_client:
            import base64

            queue = self.dep.queue.value
            prefix = r.redis_client.replace("{queue}", queue).replace(
                "{queue_b64}", base64.b64encode(queue.encode()).decode())
            try:
                names = probes.redis_client_names(self.dep.redis.value)
            except Exception as e:  # Redis down: not ready, and say why
                return False, f"Redis: {type(e).__name__}: {e}"
            hit = next((n for n in names if n.startswith(prefix)), None)
            return (True, f"Redis client {hit}") if hit else (False, f"no Redis client named {prefix}* yet")
        up = next((u.uptime_s for u in self.runtime.status() if u.unit == unit_name(role, color)), None) or 0
        return up >= r.seconds, f"running {up}s"

    def _logs_detail(self, d: Unit) -> str:
        return f"last lines of {d.unit}:\n{self.runtime.logs(d.service, d.color, 25)}"

    def wait_ready(self, defs: list[Unit], say: Progress) -> None:
        """Return once every unit runs and answers its probe; a unit that fails, or is not ready within
        ``supervisor.start_timeout``, is one error with its last log lines."""
        pending = list(defs)

        def ready() -> bool:
            for d in list(pending):
                state = self.unit_state(d.unit)
                if state in (*FAILED_STATES, "ABSENT"):
                    why = next((u.description for u in self.runtime.status() if u.unit == d.unit), "")
                    raise OpsError(f"{d.unit} failed to start ({state}{f': {why}' if why else ''})",
                                   details=self._logs_detail(d))
                if _probed(d, state) and self.probe(d)[0]:
                    pending.remove(d)
                    say(f"{d.unit} is ready")
            return not pending

        timeout = self.cfg.supervisor.start_timeout
        if not poll_until(ready, timeout, interval=0.2):
            d = pending[0]
            raise OpsError(f"{d.unit} was not ready within {timeout:.0f}s: {self.probe(d)[1]}",
                           details=self._logs_detail(d))

    # -- down --
    def down(self, progress: Progress | None = None) -> StackReport:
        """Stop everything, the app first and Postgres last; data is kept. A unit still not stopped when its wait
        ends does not stop the later groups; it keeps the engine up (the engine holds it) and ends the run in an
        error naming it, once what did stop has been said."""
        say = progress or (lambda _m: None)
        if not self._engine_running():
            return StackReport(str(self.layout.root), self.url, None, [], ["stack was not running"])
        running = [(u.service, u.color) for u in self.runtime.status() if u.state not in STOPPED_STATES]
        actions: list[str] = []
        stuck: list[str] = []
        wait = self.cfg.supervisor.stop_timeout + 30
        workers = tuple({s for s, _c in running if is_app(s) and s != appspec.API})  # drained before the api
        for group in (workers, (appspec.API,), *INFRA_STOP_ORDER):
            units = [(s, c) for s, c in running if s in group]
            for s, c in units:
                say(f"stopping {unit_name(s, c)}")
                self.runtime.stop(s, c, wait=False)
            left = not_stopped(self.runtime, units, wait)
            actions += [f"stopped {unit_name(s, c)}" for s, c in units if (s, c) not in left]
            stuck += [unit_name(s, c) for s, c in left]
        if stuck:
            say("; ".join(actions) or "nothing stopped")
            raise OpsError(f"{', '.join(stuck)} did not stop within {wait:.0f}s; the engine running the stack is "
                           "left up (it still holds what did not stop)",
                           hint="see `aixsss-ops stack status` (and `aixsss-ops stack logs UNIT`), then rerun "
                                "`aixsss-ops stack down`")
        actions += self._engine_down()
        return StackReport(str(self.layout.root), self.url, None, [], actions or ["stack was not running"])

    def wait_stopped(self, units: list[str]) -> bool:
        """True once every named unit (``api-blue``, ``redis``) is stopped."""
        pairs = [(s, c or None) for s, _, c in (u.partition("-") for u in units)]
        return wait_stopped(self.runtime, pairs, self.cfg.supervisor.stop_timeout + 30)

    # -- status --
    def status(self, actions: list[str] | None = None) -> StackReport:
        colors = self.colors()
        units = {u.unit: u for u in self.runtime.status()} if self._engine_running() else {}
        active = self.live_color() or colors.active
        wanted = self.infra_defs() + self.app_defs(active)
        wanted += [d for c in colors.colors if c != active for d in self.app_defs(c) if d.unit in units]
        reports = []
        for d in wanted:
            u = units.get(d.unit)
            state = u.state if u else ("ABSENT" if units else "STOPPED")
            if _probed(d, state):
                healthy, detail = self.probe(d)
                if u.description and (state != "RUNNING" or "unhealthy" in u.description):
                    detail = f"{detail}; engine: {u.description}"  # what the engine says of it beside the probe
            else:
                healthy, detail = False, (u.description if u else self._absent_detail(state)) or state.lower()
            reports.append(ServiceReport(d.unit, state, healthy, detail, d.port_labels(), u.pid if u else None,
                                         u.uptime_s if u else None,
                                         "infra" if d.color is None else ("active" if d.color == active else "idle")))
        for service in self.cfg.external:
            ok, detail = self.probe_external(service)
            reports.append(ServiceReport(service, "EXTERNAL", ok, detail, role="external"))
        return StackReport(str(self.layout.root), self.url, active, reports, actions or [])

    def logs(self, unit: str, lines: int = 100) -> str:
        known = {d.unit for d in self.infra_defs()} | {unit_name(s, c) for s in appspec.roles(self.cfg) for c in COLORS}
        if unit not in known:
            raise UsageError(f"unknown service '{unit}'; one of: {', '.join(sorted(known))}")
        service, _, color = unit.partition("-")
        return self.runtime.logs(service, color or None, lines)
