"""The ops.toml model: TOML file, then ``AIXSSS_OPS_*`` environment overrides (``__`` nests).

The models are msgspec Structs: constraints in ``Meta``, checks across keys in ``__post_init__``. ``load_config``
reads the file, lays the variables over it and converts the whole in one pass; an error names where the value
came from (the file or the variable) and the key path.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import msgspec
from msgspec import Meta, field

from aixsss_ops.errors import ConfigError
from aixsss_ops.validate import BOOL_WORDS, SecretStr, convert, dotted, dump, located

DEFAULT_CONFIG = "ops.toml"
ENV_PREFIX = "AIXSSS_OPS_"

# TOML's ``true`` is not the number 1: msgspec never takes a boolean for an int or a float.
Port = Annotated[int, Meta(ge=1, le=65535, description="a TCP port")]
FsPath = Path  # a NUL character is refused on conversion
Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
Count = Annotated[int, Meta(ge=0)]
NonEmpty = Annotated[str, Meta(min_length=1)]
# a systemd OnCalendar expression: weekdays, dates, times, ranges, lists, repetitions, a time zone; nothing that
# could end the line of the unit it goes into
Calendar = Annotated[str, Meta(min_length=1, pattern=r"^[A-Za-z0-9*:,./~_ +-]+$")]


def is_loopback(host: str) -> bool:
    """``localhost`` or an address of 127.0.0.0/8 or ::1: only this machine can connect."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


class FieldInfo(NamedTuple):
    annotation: Any
    default: Any


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A table of ops.toml: unknown keys are errors."""

    model_fields: ClassVar[dict[str, FieldInfo]] = {}  # name -> (type, default) of each key, set below

    def model_dump(self) -> dict:
        """The values by key name (paths as strings, secrets masked)."""
        return dump(self)

    def model_copy(self, *, update: dict[str, Any] | None = None):
        """A copy with ``update`` applied (not validated again)."""
        return msgspec.structs.replace(self, **(update or {}))


class Ports(_Section):
    postgres: Port = 15432
    redis: Port = 16379
    s3: Port = 18333
    s3_grpc: Port = 28333
    s3_tls: Port = 18443  # HTTPS of the embedded store, open only for a pgBackRest repository in a bucket of it
    weed_master: Port = 19333
    weed_master_grpc: Port = 29333
    weed_volume: Port = 18080
    weed_volume_grpc: Port = 28080
    weed_filer: Port = 18888
    weed_filer_grpc: Port = 28888
    proxy: Port = 18000
    api_blue: Port = 13001
    api_green: Port = 13002


class PostgresSection(_Section):
    external: bool = False  # a server aixsss-ops does not run (a managed service): DATABASE_URL names it
    database: str = "aixsss"
    user: str = "aixsss"
    os_user: str = "postgres"  # unprivileged account that runs the server when invoked as root
    superuser: str = "postgres"


class RedisSection(_Section):
    external: bool = False  # a server aixsss-ops does not run: REDIS_URL names it
    maxmemory: str = "256mb"


class S3Section(_Section):
    external: bool = False  # a store aixsss-ops does not run: S3_ENDPOINT, S3_ACCESS_KEY and S3_SECRET_KEY name it
    bucket: str = "aixsss-assets"
    access_key: str = "minio"
    secret_key: SecretStr = field(default_factory=lambda: SecretStr("minio123456"))
    region: str = "us-east-1"
    volume_size_limit_mb: Annotated[int, Meta(ge=1)] = 64


Signal = Literal["TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL"]
Argv = Annotated[list[str], Meta(min_length=1)]


class BuildStep(_Section):
    """One command of a release's build, run in the release (``cwd`` inside it), as an argument list. In ops.toml
    a step may also be written as the bare argument list."""

    run: Argv
    cwd: str = "."
    timeout: Positive = 900.0  # seconds the step may take
    env: dict[str, str] = field(default_factory=dict)


class Readiness(_Section):
    """How a process shows it is ready: an HTTP answer on its port, a line in its log, or a Redis client name.
    With none of them, running for ``seconds`` is ready (a process that can prove nothing better)."""

    http: Annotated[str, Meta(pattern=r"^/")] | None = None  # path asked on the process's port
    status: Annotated[int, Meta(ge=100, le=599)] = 200
    json_fields: dict[str, str | int | float | bool] = field(default_factory=dict, name="json")  # fields the
    # JSON answer must have
    log: str | None = None  # a regular expression a line of its log must match
    redis_client: str | None = None  # a prefix of a Redis CLIENT LIST name the process opens
    seconds: Positive = 2.0  # with no check: how long it must have run

    @property
    def proves(self) -> bool:
        """An answer, a log line or a Redis client: proof that the process works, more than the engine's own start
        check (still running after a second) gives."""
        return self.http is not None or self.log is not None or self.redis_client is not None

    def __post_init__(self) -> None:
        if self.log is not None:
            try:
                re.compile(self.log)
            except re.error as e:
                raise ValueError(f"log: not a regular expression: {e}") from None
        if sum(x is not None for x in (self.http, self.log, self.redis_client)) > 1:
            raise ValueError("give one of http, log, redis_client")


def inside_release(key: str, value: str) -> None:
    """Refuse a folder of the app description that is not inside the release: an absolute path (other than one
    under ``{release}``) or one whose ``..`` climbs out of it."""
    rel = value[len("{release}"):].lstrip("/") if value.startswith("{release}") else value
    parts: list[str] = []
    for part in rel.replace("\\", "/").split("/"):
        if part == "..":
            if not parts:
                raise ValueError(f"{key}: {value!r} must be inside the release")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if rel.startswith("/") or "{release}" in rel:
        raise ValueError(f"{key}: {value!r} must be inside the release (a path relative to it)")


class ProcessSpec(_Section):
    """One process of the app, run per color. Placeholders in ``command``, ``cwd`` and ``env`` values:
    ``{release}`` (the release folder), ``{python}`` (this Python), ``{color}``, ``{version}``."""

    command: Argv
    cwd: str = "."  # inside the release
    env_file: str | None = None  # the services' env file it reads (api, worker); default: its name
    port_env: str | None = None  # the variable that carries its port (the proxy routes /api there)
    socket_env: str | None = None  # the variable that carries a unix socket path it also listens on (the proxy
    # then connects there directly)
    env: dict[str, str] = field(default_factory=dict)  # extra environment; a secret-looking value (its name, a URL
    # with a password) reaches the process through a 0600 env file, never a command line (runtime/local_specs.py)
    ready: Readiness = field(default_factory=Readiness)
    stop_signal: Signal = "TERM"
    stop_timeout: Positive = 30.0  # seconds between the stop signal and SIGKILL
    count: Annotated[int, Meta(ge=1, le=16)] = 1  # processes per color: <role>, <role>.2 … <role>.<count>

    def __post_init__(self) -> None:
        inside_release("cwd", self.cwd)


def bundled_processes() -> dict[str, ProcessSpec]:
    """The processes of the bundled Python app (``app/``): the default description."""
    env = {"PYTHONPATH": "{release}", "PYTHONUNBUFFERED": "1"}
    return {
        "api": ProcessSpec(command=["{python}", "-m", "api"], port_env="PORT", socket_env="API_SOCKET",
                           env={**env, "HOST": "{host}"}, ready=Readiness(http="/api/health"), stop_timeout=30.0),
        "worker": ProcessSpec(command=["{python}", "-m", "worker"], env=env,
                              ready=Readiness(log=r"worker consuming queue"), stop_timeout=40.0),
    }


class AppSection(_Section):
    """The app: where its source is, how a release of it is built, and the processes each color runs. The
    defaults describe the bundled Python app (``app/``)."""

    source: FsPath = Path("app")
    node_env: Literal["development", "test", "production"] = "development"
    queue: NonEmpty = "ai-jobs"
    worker_concurrency: Annotated[int, Meta(ge=1)] = 4
    cors_origin: str | None = None
    version: str = "1.0.0"
    build: list[BuildStep] = field(default_factory=list)
    migrations: str = "migrations"  # the Prisma migrations folder, inside the release
    web_root: str = "web"  # the static web build, inside the release
    processes: dict[str, ProcessSpec] = field(default_factory=bundled_processes)

    def __post_init__(self) -> None:
        inside_release("web_root", self.web_root)
        bad = [n for n in self.processes if not re.fullmatch(r"[a-z][a-z0-9]*", n)]
        if bad:
            raise ValueError(f"processes: process names are lowercase letters and digits: {', '.join(bad)}")
        if "api" not in self.processes:
            raise ValueError("processes: an 'api' process is required (the proxy routes /api to it)")
        ported = [n for n, p in self.processes.items() if p.port_env]
        if ported != ["api"]:
            raise ValueError("processes: exactly one process, 'api', takes the color's port (port_env)")
        many = [n for n, p in self.processes.items() if p.count > 1 and (p.port_env or p.socket_env)]
        if many:
            raise ValueError(f"processes: {', '.join(many)} listens on the color's port or socket: count must be 1")


class SupervisorSection(_Section):
    start_timeout: Positive = 60.0
    stop_timeout: Positive = 40.0


class DeploySection(_Section):
    health_interval: Positive = 0.5  # seconds between health checks of the new color
    health_threshold: Annotated[int, Meta(ge=1)] = 3  # consecutive 2xx answers the gate needs
    health_timeout: Positive = 60.0  # seconds the new color has to pass the gate
    warm_minutes: NonNegative = 30.0  # how long the previous color's api stays up for rollback
    lock_timeout: NonNegative = 60.0  # seconds a second deploy waits for the lock
    # seconds each migration statement waits for a table or row lock (PostgreSQL's lock_timeout) held by another
    # session, e.g. an app transaction left open, before the migration fails: rolled back, recorded as rolled back,
    # the blocking session named, retried by the next deploy. While it waits, the app's queries on that table queue
    # behind it, so keep it short; 0 = no limit. A script may set its own (SET lock_timeout = ...).
    migration_statement_lock_timeout: NonNegative = 5.0
    hooks_dir: FsPath = Path("hooks")
    backup: bool = True


# -- the backup section's types: a strict boolean, the base backups' calendars --

StrictBool = Literal[True, False]  # a TOML boolean only (``pitr = 1`` is refused); a variable's word is one

_WEEKDAY_NAMES = {name: n for n, full in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday",
                                                    "saturday", "sunday")) for name in (full[:3], full)}
CALENDAR_SHORTHANDS = {"minutely": "*-*-* *:*:00", "hourly": "*-*-* *:00:00", "daily": "*-*-* 00:00:00",
                       "weekly": "Mon *-*-* 00:00:00", "monthly": "*-*-01 00:00:00",
                       "quarterly": "*-01,04,07,10-01 00:00:00", "semiannually": "*-01,07-01 00:00:00",
                       "yearly": "*-01-01 00:00:00", "annually": "*-01-01 00:00:00"}
_ITEM = re.compile(r"(?P<start>\*|\d+(?:\.\d+)?)(?:\.\.(?P<end>\d+))?(?:/(?P<step>\d+(?:\.\d+)?))?")


class CalendarEvent(NamedTuple):
    """An OnCalendar expression as systemd.time(7) reads it; None in a field: every value."""

    weekdays: frozenset[int] | None  # 0 = Monday .. 6 = Sunday (systemd's order: a range runs Monday to Sunday)
    years: frozenset[int] | None
    months: frozenset[int] | None
    days: frozenset[int] | None
    last_days: bool  # ``~``: the days count back from the month's end
    hours: frozenset[int] | None
    minutes: frozenset[int] | None
    seconds: frozenset[float] | None
    zone: str | None


def _calendar_values(text: str, what: str, lo: int, hi: int, fraction: bool = False) -> frozenset | None:
    """A component: ``*``, or a list of values, ranges ``a..b`` and repetitions ``a/n``, ``a..b/n``."""
    if text == "*":
        return None
    out: set = set()
    for item in text.split(","):
        m = _ITEM.fullmatch(item)
        if not m:
            raise ValueError(f"{what} {item!r}: not a value, a range a..b or a repetition a/n")
        start, end, step = m["start"], m["end"], m["step"]
        if not fraction and ("." in start or (step and "." in step)):
            raise ValueError(f"{what} {item!r}: a whole number is needed")
        if start == "*":  # alone it is every value; systemd takes no list or repetition of it
            raise ValueError(f"{what} {item!r}: not a value, a range a..b or a repetition a/n")
        first = float(start)
        last = float(end) if end else (hi if step else first)
        top = hi + 1 if fraction else hi
        for v in (first, last):
            if not (lo <= v < top if fraction else lo <= v <= hi):
                raise ValueError(f"{what} {v:g} is outside {lo}..{hi}")
        if last < first:
            raise ValueError(f"{what} range {item!r} runs backwards")
        if step and float(step) <= 0:
            raise ValueError(f"{what} {item!r}: a repetition needs a step above 0")
        v = first
        while v <= last:
            out.add(int(v) if v == int(v) else v)
            if not step and not end:
                break
            v += float(step) if step else 1
    return frozenset(out)


def _calendar_weekdays(text: str) -> frozenset[int] | None:
    out: set[int] = set()
    for item in text.lower().split(","):
        ends = item.split("..") if ".." in item else item.split("-")
        if len(ends) > 2 or any(e not in _WEEKDAY_NAMES for e in ends):
            raise ValueError(f"weekday {item!r}: not a day name (Mon..Sun, Monday..Sunday) or a range of two")
        first, last = _WEEKDAY_NAMES[ends[0]], _WEEKDAY_NAMES[ends[-1]]
        if last < first:
            raise ValueError(f"weekday range {item!r} runs backwards (a range runs from Monday to Sunday)")
        out.update(range(first, last + 1))
    return frozenset(out) if len(out) < 7 else None


def _calendar_zone(text: str) -> str:
    import zoneinfo

    if text.upper() == "UTC":
        return "UTC"
    try:
        zoneinfo.ZoneInfo(text)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        raise ValueError(f"{text!r} is not a time zone") from None
    return text


def parse_calendar(text: str) -> CalendarEvent:
    """``[weekdays] [[year-]month-day] [hour:minute[:second]] [time zone]`` or a shorthand (``daily``, ...);
    ValueError naming what is wrong (an hour past 23, a minute past 59, a day name systemd does not know)."""
    tokens = text.split()
    if len(tokens) == 1 and tokens[0].lower() in CALENDAR_SHORTHANDS:
        tokens = CALENDAR_SHORTHANDS[tokens[0].lower()].split()
    if not tokens:
        raise ValueError("empty")
    weekdays = _calendar_weekdays(tokens.pop(0)) if tokens[0][:1].isalpha() else None
    date = tokens.pop(0) if tokens and ":" not in tokens[0] and not tokens[0][:1].isalpha() else None
    clock = tokens.pop(0) if tokens and ":" in tokens[0] else None
    zone = _calendar_zone(tokens.pop(0)) if len(tokens) == 1 and tokens[0][:1].isalpha() else None
    if tokens:
        raise ValueError(f"{tokens[0]!r} is not in its place (weekdays, then the date, the time, a time zone)")
    years = months = days = None
    last_days = False
    if date is not None:
        head, sep, day = date.rpartition("~")
        if not sep:
            head, sep, day = date.rpartition("-")
        parts = head.split("-") if sep else []
        if not sep or "~" in head or len(parts) not in (1, 2):
            raise ValueError(f"date {date!r}: not [year-]month-day")
        last_days = "~" in date
        years = _calendar_values(parts[0], "year", 1970, 2199) if len(parts) == 2 else None
        months = _calendar_values(parts[-1], "month", 1, 12)
        days = _calendar_values(day, "day", 1, 31)
    hours = minutes = seconds = frozenset({0})
    if clock is not None:
        parts = clock.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"time {clock!r}: not hour:minute[:second]")
        hours = _calendar_values(parts[0], "hour", 0, 23)
        minutes = _calendar_values(parts[1], "minute", 0, 59)
        seconds = _calendar_values(parts[2], "second", 0, 59, fraction=True) if len(parts) == 3 else frozenset({0})
    return CalendarEvent(weekdays, years, months, days, last_days, hours, minutes, seconds, zone)


class BackupSection(_Section):
    dir: FsPath = Path(".aixsss/backups")
    destination: Literal["local", "s3"] = "local"  # where backups are kept: backup.dir or a bucket
    s3_bucket: str = ""  # destination = s3: the bucket; must differ from the app's bucket
    s3_prefix: str = ""  # destination = s3: key prefix of the backups in s3_bucket
    s3_endpoint: str = ""  # destination = s3: http(s)://host:port; empty = the app's S3
    s3_access_key: str = ""  # destination = s3: empty = the app's S3 credentials
    s3_secret_key: SecretStr = field(default_factory=lambda: SecretStr(""))
    jobs: Count = 0  # pg_dump/pg_restore parallel jobs; 0 = the number of cores
    compression: Annotated[int, Meta(ge=0, le=9)] = 1  # gzip level of the dump files (pg_dump --compress)
    encrypt: StrictBool = False
    encryption_key_env: NonEmpty = "AIXSSS_BACKUP_ENCRYPTION_KEY"
    keep_last: Count = 7
    keep_daily: Count = 7
    keep_weekly: Count = 4
    noncurrent_version_days: Count = 0  # add a lifecycle rule expiring noncurrent versions; 0 = none
    rpo_hours: Positive = 24.0  # recovery point objective: doctor fails past it
    verify_max_age_days: Positive = 7.0  # doctor warns when no verify is this recent
    pre_restore_keep_days: NonNegative = 7.0  # backup cleanup drops databases a restore kept
    # (<db>_pre_restore_<time>) once this old
    pitr: StrictBool = False  # continuous WAL archiving with pgBackRest: restore --to-time any instant inside
    # pitr_retention_days
    # days of base backups, WAL and noncurrent object versions kept for point-in-time recovery (at most
    # pgBackRest's repo1-retention-full maximum)
    pitr_retention_days: Annotated[int, Meta(ge=1, le=9999999)] = 7
    # pitr: doctor fails when the newest archived WAL is older; also the archive_timeout of an idle database (at
    # most PostgreSQL's maximum of it)
    rpo_seconds: Annotated[float, Meta(gt=0, le=1073741823)] = 60.0
    pitr_full_calendar: Calendar = "Sun *-*-* 03:00:00"  # pitr: systemd OnCalendar of the full base backup
    pitr_incr_calendar: Calendar = "Mon..Sat *-*-* 03:00:00"  # pitr: systemd OnCalendar of the incremental
    # base backups

    def __post_init__(self) -> None:
        if self.destination == "s3" and not self.s3_bucket:
            raise ValueError('destination = "s3" needs s3_bucket (a bucket other than the app\'s)')
        for key in ("pitr_full_calendar", "pitr_incr_calendar"):
            text = getattr(self, key)
            try:
                parse_calendar(text)
            except ValueError as e:
                raise ValueError(f"{key}: {text!r} is not a systemd OnCalendar expression: {e}") from None


class CiSection(_Section):
    """`aixsss-ops ci github|gitlab`: what the printed pipelines install."""

    install: str = ""  # pip requirement of aixsss-ops in the pipelines (a version, a git URL with a tag, a
    # wheel); empty = the exact version that printed them


class DockerSection(_Section):
    """The docker runtime (``runtime = "docker"``): engine address, image names, resource limits."""

    host: str = ""  # Engine address, as DOCKER_HOST; empty = $DOCKER_HOST, else the local socket
    timeout: Positive = 60.0  # seconds every Engine API call may take
    network: str = ""  # user-defined network of the project; empty = the project name
    base_image: NonEmpty = "aixsss/base:bookworm"  # Debian root filesystem (images base)
    runtime_image: NonEmpty = "aixsss/runtime:bookworm"  # base + the project's wheels
    app_image: NonEmpty = "aixsss/app"  # repository of the app images; tag = release id
    postgres_image: NonEmpty = "aixsss/base:bookworm"
    redis_image: NonEmpty = "aixsss/base:bookworm"
    s3_image: NonEmpty = "aixsss/runtime:bookworm"
    proxy_image: NonEmpty = "aixsss/base:bookworm"
    debian_mirror: str = ""  # mirror for debootstrap; empty = the one apt uses here
    debian_suite: str = "bookworm"
    app_memory: str = "512m"  # memory limit of each api/worker container; empty = none
    app_cpus: NonNegative = 1.0  # CPU limit of each api/worker container; 0 = none
    infra_memory: str = "1g"  # memory limit of postgres, redis, s3 and the proxy; empty = none
    infra_cpus: NonNegative = 0.0  # CPU limit of each infra container; 0 = none
    stop_timeout: Annotated[int, Meta(ge=1)] = 30  # seconds a container gets after SIGTERM before SIGKILL


Constraint = Annotated[str, Meta(pattern=r"^\S+\s*(==|!=)\s*\S+$")]


class SwarmSection(_Section):
    """The swarm runtime (``runtime = "swarm"``): the manager is the engine ``[docker] host`` names; images and
    limits come from ``[docker]``. Every process of the app is one service per color."""

    infra_node: str = ""  # hostname of the node that carries postgres, redis and s3 (and their volumes); empty =
    # the node of the manager aixsss-ops talks to
    replicas: dict[str, Annotated[int, Meta(ge=0, le=64)]] = field(default_factory=dict)  # role -> replicas per
    # color; default: the process's count (1 for the api)
    api_constraints: list[Constraint] = field(default_factory=list)  # placement of the api's replicas
    worker_constraints: list[Constraint] = field(default_factory=list)  # placement of every other process, e.g.
    # "node.labels.aixsss.worker==true"
    proxy_constraints: list[Constraint] = field(default_factory=list)  # the nodes that carry the proxy (one per
    # node, its port published on the node itself); empty = every node
    registry: str = "embedded"  # where the nodes pull app images: "embedded" (the project's registry service),
    # "none" (images stay on the manager's engine: a one-node swarm), or host:port of the operator's registry
    registry_port: Port = 5000  # the embedded registry, published on 127.0.0.1 of every node
    switch_timeout: Positive = 30.0  # seconds every proxy node gets to switch colors

    def __post_init__(self) -> None:
        bad = [n for n in self.replicas if not re.fullmatch(r"[a-z][a-z0-9]*", n)]
        if bad:
            raise ValueError(f"replicas: not a process name: {', '.join(bad)}")


EXTERNAL_CAPABLE = ("postgres", "redis", "s3")  # the infra a deployment may take from managed services


class OpsConfig(_Section):
    """The effective configuration. Relative paths are resolved against the config file's folder;
    ``config_path`` is the file it was read from (set by ``load_config``, never read from the file)."""

    project: str = "aixsss"
    state_dir: FsPath = Path(".aixsss")
    runtime: Literal["local", "docker", "swarm"] = "local"
    allow_public_host: bool = False  # accept a host other than a loopback address: the stack's services (Redis
    # without a password among them) then listen on it
    host: str = "127.0.0.1"
    ports: Ports = field(default_factory=Ports)
    postgres: PostgresSection = field(default_factory=PostgresSection)
    redis: RedisSection = field(default_factory=RedisSection)
    s3: S3Section = field(default_factory=S3Section)
    app: AppSection = field(default_factory=AppSection)
    supervisor: SupervisorSection = field(default_factory=SupervisorSection)
    deploy: DeploySection = field(default_factory=DeploySection)
    backup: BackupSection = field(default_factory=BackupSection)
    docker: DockerSection = field(default_factory=DockerSection)
    swarm: SwarmSection = field(default_factory=SwarmSection)
    ci: CiSection = field(default_factory=CiSection)

    config_path: Path | None = None

    def __post_init__(self) -> None:
        for name in _SECTIONS:  # OpsConfig(backup={...}): a table given as a mapping, as ops.toml holds it
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, convert(value, self.model_fields[name].annotation))
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.project):
            raise ValueError("project: lowercase letters, digits, '-' and '_', starting with a letter or a digit")
        if self.backup.pitr and self.postgres.external:
            raise ValueError("backup.pitr: point-in-time recovery archives the WAL of the Postgres aixsss-ops runs; "
                             "with postgres.external use the managed service's own point-in-time recovery")
        if self.backup.pitr and self.backup.destination == "s3" and self.s3.external and not (
                self.backup.s3_endpoint and self.backup.s3_access_key):
            raise ValueError("backup.pitr with destination = \"s3\" and s3.external: name the repository's store "
                             "(backup.s3_endpoint, s3_access_key, s3_secret_key)")
        if not self.allow_public_host and not is_loopback(self.host):
            raise ValueError(f"host: {self.host!r} is not a loopback address: every service of the stack would "
                             "listen on it, Redis without a password; use 127.0.0.1, or set allow_public_host = "
                             "true to accept that (with a firewall in front)")

    @property
    def external(self) -> tuple[str, ...]:
        """The infra services the deployment uses but does not run (managed services)."""
        return tuple(name for name in EXTERNAL_CAPABLE if getattr(self, name).external)

    @property
    def base_dir(self) -> Path:
        return self.config_path.parent if self.config_path else Path.cwd()

    def resolve(self, p: Path) -> Path:
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    @property
    def state(self) -> Path:
        return self.resolve(self.state_dir)

    @property
    def app_source(self) -> Path:
        return self.resolve(self.app.source)

    @property
    def backup_dir(self) -> Path:
        return self.resolve(self.backup.dir)

    def public_dict(self) -> dict:
        data = self.model_dump()
        del data["config_path"]
        data["s3"]["secret_key"] = self.s3.secret_key.get_secret_value()
        data["config_path"] = str(self.config_path) if self.config_path else None
        data["state_dir"] = str(self.state)
        data["app"]["source"] = str(self.app_source)
        data["backup"]["dir"] = str(self.backup_dir)
        data["deploy"]["hooks_dir"] = str(self.resolve(self.deploy.hooks_dir))
        return data


for _cls in (Ports, PostgresSection, RedisSection, S3Section, BuildStep, Readiness, ProcessSpec, AppSection,
             SupervisorSection, DeploySection, BackupSection, CiSection, DockerSection, OpsConfig):
    _names = _cls.__struct_fields__
    _defaults = (msgspec.NODEFAULT,) * (len(_names) - len(_cls.__struct_defaults__)) + _cls.__struct_defaults__
    _cls.model_fields = {  # a section's annotation is its class; the others are as written
        name: FieldInfo(globals().get(_cls.__annotations__[name], _cls.__annotations__[name]), default)
        for name, default in zip(_names, _defaults, strict=True)}


_SECTIONS = tuple(n for n, f in OpsConfig.model_fields.items()
                  if isinstance(f.annotation, type) and issubclass(f.annotation, msgspec.Struct))


# -- loading: the file, then the environment over it --

_READ_FROM_FILE = {"config_path"}


def _env_overrides() -> dict[str, str]:
    """The ``AIXSSS_OPS_*`` variables that set a key (upper-cased name -> name as set; the case is ignored)."""
    return {k.upper(): k for k in os.environ
            if k.upper().startswith(ENV_PREFIX) and k.upper() != "AIXSSS_OPS_CONFIG"}


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


class _EnvError(Exception):
    def __init__(self, variable: str, key: str, message: str, hint: str | None = None):
        super().__init__(f"{variable}: {key}: {message}")
        self.hint = hint


def _lay_env(data: dict, env: dict[str, str]) -> dict:
    """``data`` (the file's, changed in place) with every ``AIXSSS_OPS_<KEY>[__<KEY>...]`` variable laid over
    it. A variable that names a whole table (or list, or mapping) holds it as JSON and is merged into the file's;
    one naming a top-level key that does not exist is not a setting of ops.toml and is left alone."""
    import typing

    for upper in sorted(env):  # sections before their keys: AIXSSS_OPS_PORTS, then AIXSSS_OPS_PORTS__PROXY
        name = env[upper]
        value = os.environ[name]
        parts = name[len(ENV_PREFIX):].split("__")
        tp: Any = OpsConfig
        where = data
        path: list[str] = []
        for i, raw in enumerate(parts):
            last = i == len(parts) - 1
            if _is_section(tp):
                key = raw.lower()
                fields = dict(zip(tp.__struct_encode_fields__, tp.__struct_fields__, strict=True))
                if key not in fields or key in _READ_FROM_FILE:
                    if i == 0:
                        break  # not a key of ops.toml
                    where[key] = value  # an unknown key: the conversion names it
                    break
                tp = typing.get_type_hints(tp)[fields[key]]
            else:  # a mapping: the segment is a key of it (the file's key it names whatever the case, else as written)
                key = next((k for k in where if isinstance(k, str) and k.lower() == raw.lower()), raw) \
                    if raw not in where else raw
                args = typing.get_args(tp)
                tp = args[1] if typing.get_origin(tp) is dict and len(args) == 2 else Any
            path.append(key)
            if last:
                where[key] = _env_value(name, ".".join(path), value, tp, where.get(key))
            else:
                nxt = where.get(key)
                if not isinstance(nxt, dict):
                    nxt = where[key] = {}
                where = nxt
    return data


def _env_value(name: str, key: str, value: str, tp: Any, current: Any) -> Any:
    import typing

    origin = typing.get_origin(tp) or tp
    if (tp is bool or tp == StrictBool) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    if not (_is_section(tp) or origin in (dict, list)):
        return value  # a scalar: the (lax) conversion reads numbers from the string
    what = "list" if origin is list else "object"
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list if origin is list else dict):
        raise _EnvError(name, key, f"not a JSON {what}",
                        hint=f"set one key as {name}__KEY=value, or the whole {key} as a JSON {what}"
                        if what == "object" else f"set {key} as a JSON list")
    if isinstance(parsed, dict) and isinstance(current, dict):
        return _deep_merge(current, parsed)
    return parsed


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _bare_build_steps(data: dict) -> None:
    """``build = [["npm", "ci"], ...]``: a bare argument list is the step ``{run = [...]}``."""
    app = data.get("app")
    if isinstance(app, dict) and isinstance(app.get("build"), list):
        app["build"] = [{"run": s} if isinstance(s, list) else s for s in app["build"]]


def _source_of(loc: tuple, file: str, env: dict[str, str]) -> str:
    """Where the value at ``loc`` came from: the variable that set it (or a section of it), else the file."""
    parts = [str(p).upper() for p in loc]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:n])
        if name in env:
            return env[name]
    under = sorted(v for k, v in env.items() if parts and k.startswith(ENV_PREFIX + "__".join(parts) + "__"))
    return f"{file} (with {', '.join(under)})" if under else file


def load_config(path: str | os.PathLike | None = None) -> OpsConfig:
    """Load ops.toml (``path``, else ``$AIXSSS_OPS_CONFIG``, else ./ops.toml; a missing default is fine)."""
    explicit = path or os.environ.get("AIXSSS_OPS_CONFIG")
    cfg_path = Path(explicit or DEFAULT_CONFIG).expanduser()
    data: dict = {}
    if cfg_path.exists():
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{cfg_path}: malformed TOML: {e}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"{cfg_path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})",
                              hint="TOML files are UTF-8") from None
        except OSError as e:
            raise ConfigError(f"{cfg_path}: cannot read: {e.strerror}") from None
    elif explicit:
        raise ConfigError(f"{cfg_path}: configuration file not found")
    env = _env_overrides()
    data.pop("config_path", None)  # set below, from where the file is
    try:
        data = _lay_env(data, env)
    except _EnvError as e:
        raise ConfigError(str(e), hint=e.hint) from None
    _bare_build_steps(data)
    try:
        cfg = convert(data, OpsConfig)
    except msgspec.ValidationError as e:
        loc, msg = located(e, OpsConfig, data)
        raise ConfigError(f"{_source_of(loc, str(cfg_path), env)}: {dotted(loc)}: {msg}") from None
    cfg.config_path = cfg_path.resolve() if cfg_path.exists() else None
    return cfg
