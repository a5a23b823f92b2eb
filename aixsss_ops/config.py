"""The ops.toml model: TOML file, then ``AIXSSS_OPS_*`` environment overrides (``__`` nests)."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from aixsss_ops.errors import ConfigError

DEFAULT_CONFIG = "ops.toml"
ENV_PREFIX = "AIXSSS_OPS_"


def _not_bool(v):
    """TOML's ``true`` is not the number 1 (pydantic's lax int/float would take it)."""
    if isinstance(v, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return v


def _no_nul(p: Path) -> Path:
    if "\0" in str(p):
        raise ValueError("a path cannot contain a NUL character")
    return p


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]
Port = Int
FsPath = Annotated[Path, AfterValidator(_no_nul)]


def is_loopback(host: str) -> bool:
    """``localhost`` or an address of 127.0.0.0/8 or ::1: only this machine can connect."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Ports(_Section):
    postgres: Port = 15432
    redis: Port = 16379
    s3: Port = 18333
    s3_grpc: Port = 28333
    weed_master: Port = 19333
    weed_master_grpc: Port = 29333
    weed_volume: Port = 18080
    weed_volume_grpc: Port = 28080
    weed_filer: Port = 18888
    weed_filer_grpc: Port = 28888
    proxy: Port = 18000
    api_blue: Port = 13001
    api_green: Port = 13002

    @field_validator("*")
    @classmethod
    def _in_range(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError("must be a TCP port between 1 and 65535")
        return v


class PostgresSection(_Section):
    database: str = "aixsss"
    user: str = "aixsss"
    os_user: str = Field("postgres", description="unprivileged account that runs the server when invoked as root")
    superuser: str = "postgres"


class RedisSection(_Section):
    maxmemory: str = "256mb"


class S3Section(_Section):
    bucket: str = "aixsss-assets"
    access_key: str = "minio"
    secret_key: SecretStr = SecretStr("minio123456")
    region: str = "us-east-1"
    volume_size_limit_mb: Int = Field(64, ge=1)


Signal = Literal["TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL"]
Argv = Annotated[list[str], Field(min_length=1)]


class BuildStep(_Section):
    """One command of a release's build, run in the release (``cwd`` inside it), as an argument list."""

    run: Argv
    cwd: str = "."
    timeout: Float = Field(900.0, gt=0, description="seconds the step may take")
    env: dict[str, str] = Field(default_factory=dict)


def _build_step(v):
    return {"run": v} if isinstance(v, list) else v


class Readiness(_Section):
    """How a process shows it is ready: an HTTP answer on its port, a line in its log, or a Redis client name.
    With none of them, running for ``seconds`` is ready (a process that can prove nothing better)."""

    http: str | None = Field(None, pattern=r"^/", description="path asked on the process's port")
    status: Int = Field(200, ge=100, le=599)
    json_fields: dict[str, str | int | float | bool] = Field(default_factory=dict, alias="json",
                                                             description="fields the JSON answer must have")
    log: str | None = Field(None, description="a regular expression a line of its log must match")
    redis_client: str | None = Field(None, description="a prefix of a Redis CLIENT LIST name the process opens")
    seconds: Float = Field(2.0, gt=0, description="with no check: how long it must have run")
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("log")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return v

    @model_validator(mode="after")
    def _one(self) -> Readiness:
        if sum(x is not None for x in (self.http, self.log, self.redis_client)) > 1:
            raise ValueError("give one of http, log, redis_client")
        return self


class ProcessSpec(_Section):
    """One process of the app, run per color. Placeholders in ``command``, ``cwd`` and ``env`` values:
    ``{release}`` (the release folder), ``{python}`` (this Python), ``{color}``, ``{version}``."""

    command: Argv
    cwd: str = Field(".", description="inside the release")
    env_file: str | None = Field(None, description="the services' env file it reads (api, worker); default: its name")
    port_env: str | None = Field(None, description="the variable that carries its port (the proxy routes /api there)")
    socket_env: str | None = Field(None, description="the variable that carries a unix socket path it also listens "
                                                      "on (the proxy then connects there directly)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment, never a secret")
    ready: Readiness = Field(default_factory=Readiness)
    stop_signal: Signal = "TERM"
    stop_timeout: Float = Field(30.0, gt=0, description="seconds between the stop signal and SIGKILL")
    count: Int = Field(1, ge=1, le=1, description="processes per color (one, on the local and docker runtimes)")


def bundled_processes() -> dict[str, ProcessSpec]:
    """The processes of the bundled Python app (``app/``): the default description."""
    env = {"PYTHONPATH": "{release}", "PYTHONUNBUFFERED": "1"}
    return {
        "api": ProcessSpec(command=["{python}", "-m", "api"], port_env="PORT", socket_env="API_SOCKET",
                           env={**env, "HOST": "{host}"}, ready=Readiness(http="/api/health"), stop_timeout=30),
        "worker": ProcessSpec(command=["{python}", "-m", "worker"], env=env,
                              ready=Readiness(log=r"worker consuming queue"), stop_timeout=40),
    }


class AppSection(_Section):
    """The app: where its source is, how a release of it is built, and the processes each color runs. The
    defaults describe the bundled Python app (``app/``)."""

    source: FsPath = Path("app")
    node_env: Literal["development", "test", "production"] = "development"
    queue: str = Field("ai-jobs", min_length=1)
    worker_concurrency: Int = Field(4, ge=1)
    cors_origin: str | None = None
    version: str = "1.0.0"
    build: list[Annotated[BuildStep, BeforeValidator(_build_step)]] = Field(default_factory=list)
    migrations: str = Field("migrations", description="the Prisma migrations folder, inside the release")
    web_root: str = Field("web", description="the static web build, inside the release")
    processes: dict[str, ProcessSpec] = Field(default_factory=bundled_processes)

    @field_validator("processes")
    @classmethod
    def _roles(cls, v: dict[str, ProcessSpec]) -> dict[str, ProcessSpec]:
        bad = [n for n in v if not re.fullmatch(r"[a-z][a-z0-9]*", n)]
        if bad:
            raise ValueError(f"process names are lowercase letters and digits: {', '.join(bad)}")
        if "api" not in v:
            raise ValueError("an 'api' process is required (the proxy routes /api to it)")
        ported = [n for n, p in v.items() if p.port_env]
        if ported != ["api"]:
            raise ValueError("exactly one process, 'api', takes the color's port (port_env)")
        return v


class SupervisorSection(_Section):
    start_timeout: Float = Field(60.0, gt=0)
    stop_timeout: Float = Field(40.0, gt=0)


class DeploySection(_Section):
    health_interval: Float = Field(0.5, gt=0, description="seconds between health checks of the new color")
    health_threshold: Int = Field(3, ge=1, description="consecutive 2xx answers the gate needs")
    health_timeout: Float = Field(60.0, gt=0, description="seconds the new color has to pass the gate")
    warm_minutes: Float = Field(30.0, ge=0, description="how long the previous color's api stays up for rollback")
    lock_timeout: Float = Field(60.0, ge=0, description="seconds a second deploy waits for the lock")
    hooks_dir: FsPath = Path("hooks")
    backup: bool = True


class BackupSection(_Section):
    dir: FsPath = Path(".aixsss/backups")
    destination: Literal["local", "s3"] = Field("local", description="where backups are kept: backup.dir or a bucket")
    s3_bucket: str = Field("", description="destination = s3: the bucket; must differ from the app's bucket")
    s3_prefix: str = Field("", description="destination = s3: key prefix of the backups in s3_bucket")
    s3_endpoint: str = Field("", description="destination = s3: http(s)://host:port; empty = the app's S3")
    s3_access_key: str = Field("", description="destination = s3: empty = the app's S3 credentials")
    s3_secret_key: SecretStr = SecretStr("")
    jobs: Int = Field(0, ge=0, description="pg_dump/pg_restore parallel jobs; 0 = the number of cores")
    compression: Int = Field(1, ge=0, le=9, description="gzip level of the dump files (pg_dump --compress)")
    encrypt: bool = False
    encryption_key_env: str = Field("AIXSSS_BACKUP_ENCRYPTION_KEY", min_length=1)
    keep_last: Int = Field(7, ge=0)
    keep_daily: Int = Field(7, ge=0)
    keep_weekly: Int = Field(4, ge=0)
    noncurrent_version_days: Int = Field(0, ge=0, description="add a lifecycle rule expiring noncurrent versions; 0 = none")
    rpo_hours: Float = Field(24.0, gt=0, description="recovery point objective: doctor fails past it")
    verify_max_age_days: Float = Field(7.0, gt=0, description="doctor warns when no verify is this recent")
    pre_restore_keep_days: Float = Field(7.0, ge=0, description="backup cleanup drops databases a restore kept "
                                                                "(<db>_pre_restore_<time>) once this old")
    pitr: bool = Field(False, description="continuous WAL archiving with pgBackRest: restore --to-time any instant "
                                          "inside pitr_retention_days")
    pitr_retention_days: Int = Field(7, ge=1, description="days of base backups, WAL and noncurrent object versions "
                                                          "kept for point-in-time recovery")
    rpo_seconds: Float = Field(60.0, gt=0, description="pitr: doctor fails when the newest archived WAL is older; "
                                                       "also the archive_timeout of an idle database")
    pitr_full_calendar: str = Field("Sun *-*-* 03:00:00", min_length=1,
                                    description="pitr: systemd OnCalendar of the full base backup")
    pitr_incr_calendar: str = Field("Mon..Sat *-*-* 03:00:00", min_length=1,
                                    description="pitr: systemd OnCalendar of the incremental base backups")

    @model_validator(mode="after")
    def _s3_destination(self) -> BackupSection:
        if self.destination == "s3" and not self.s3_bucket:
            raise ValueError('destination = "s3" needs s3_bucket (a bucket other than the app\'s)')
        return self


class CiSection(_Section):
    """`aixsss-ops ci github|gitlab`: what the printed pipelines install."""

    install: str = Field("", description="pip requirement of aixsss-ops in the pipelines (a version, a git URL "
                                         "with a tag, a wheel); empty = the exact version that printed them")


class DockerSection(_Section):
    """The docker runtime (``runtime = "docker"``): engine address, image names, resource limits."""

    host: str = Field("", description="Engine address, as DOCKER_HOST; empty = $DOCKER_HOST, else the local socket")
    timeout: Float = Field(60.0, gt=0, description="seconds every Engine API call may take")
    network: str = Field("", description="user-defined network of the project; empty = the project name")
    base_image: str = Field("aixsss/base:bookworm", min_length=1, description="Debian root filesystem (images base)")
    runtime_image: str = Field("aixsss/runtime:bookworm", min_length=1, description="base + the project's wheels")
    app_image: str = Field("aixsss/app", min_length=1, description="repository of the app images; tag = release id")
    postgres_image: str = Field("aixsss/base:bookworm", min_length=1)
    redis_image: str = Field("aixsss/base:bookworm", min_length=1)
    s3_image: str = Field("aixsss/runtime:bookworm", min_length=1)
    proxy_image: str = Field("aixsss/base:bookworm", min_length=1)
    debian_mirror: str = Field("", description="mirror for debootstrap; empty = the one apt uses here")
    debian_suite: str = "bookworm"
    app_memory: str = Field("512m", description="memory limit of each api/worker container; empty = none")
    app_cpus: Float = Field(1.0, ge=0, description="CPU limit of each api/worker container; 0 = none")
    infra_memory: str = Field("1g", description="memory limit of postgres, redis, s3 and the proxy; empty = none")
    infra_cpus: Float = Field(0.0, ge=0, description="CPU limit of each infra container; 0 = none")
    stop_timeout: Int = Field(30, ge=1, description="seconds a container gets after SIGTERM before SIGKILL")


class OpsConfig(BaseSettings):
    """The effective configuration. Relative paths are resolved against the config file's folder."""

    model_config = SettingsConfigDict(env_prefix="AIXSSS_OPS_", env_nested_delimiter="__", extra="forbid")

    project: str = Field("aixsss", pattern=r"^[a-z0-9][a-z0-9_-]*$")
    state_dir: FsPath = Path(".aixsss")
    runtime: Literal["local", "docker"] = "local"
    allow_public_host: bool = Field(False, description="accept a host other than a loopback address: the stack's "
                                    "services (Redis without a password among them) then listen on it")
    host: str = "127.0.0.1"
    ports: Ports = Ports()
    postgres: PostgresSection = PostgresSection()
    redis: RedisSection = RedisSection()
    s3: S3Section = S3Section()
    app: AppSection = AppSection()
    supervisor: SupervisorSection = SupervisorSection()
    deploy: DeploySection = DeploySection()
    backup: BackupSection = BackupSection()
    docker: DockerSection = DockerSection()
    ci: CiSection = CiSection()

    config_path: Path | None = Field(None, exclude=True)

    @field_validator("host")
    @classmethod
    def _loopback_unless_allowed(cls, v: str, info: ValidationInfo) -> str:
        if not info.data.get("allow_public_host") and not is_loopback(v):
            raise ValueError(f"{v!r} is not a loopback address: every service of the stack would listen on it, "
                             "Redis without a password; use 127.0.0.1, or set allow_public_host = true to accept "
                             "that (with a firewall in front)")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The process environment overrides the file, which is passed as init kwargs.
        return (env_settings, init_settings)

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
        data = self.model_dump(mode="json")
        data["s3"]["secret_key"] = self.s3.secret_key.get_secret_value()
        data["config_path"] = str(self.config_path) if self.config_path else None
        data["state_dir"] = str(self.state)
        data["app"]["source"] = str(self.app_source)
        data["backup"]["dir"] = str(self.backup_dir)
        data["deploy"]["hooks_dir"] = str(self.resolve(self.deploy.hooks_dir))
        return data


def _env_overrides() -> dict[str, str]:
    """The ``AIXSSS_OPS_*`` variables that set a key (upper-cased name -> name as set; pydantic-settings ignores
    the case)."""
    return {k.upper(): k for k in os.environ
            if k.upper().startswith(ENV_PREFIX) and k.upper() != "AIXSSS_OPS_CONFIG"}


def _source_of(loc: tuple, file: str, env: dict[str, str]) -> str:
    """Where the value at ``loc`` came from: the variable that set it (or a section of it), else the file."""
    parts = [str(p).upper() for p in loc]
    for n in range(len(parts), 0, -1):
        name = ENV_PREFIX + "__".join(parts[:n])
        if name in env:
            return env[name]
    under = sorted(v for k, v in env.items() if parts and k.startswith(ENV_PREFIX + "__".join(parts) + "__"))
    return f"{file} (with {', '.join(under)})" if under else file


def _format_errors(source: str, err: ValidationError, env: dict[str, str] | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{_source_of(tuple(e['loc']), source, env or {})}: {loc}: {msg}")
    return "\n".join(lines)


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
    try:
        cfg = OpsConfig(**data)
    except ValidationError as e:
        raise ConfigError(_format_errors(str(cfg_path), e, env)) from None
    except SettingsError as e:  # a variable holding a whole section that is not a JSON object
        m = re.search(r'field "([^"]+)"', str(e))
        field = m.group(1) if m else ""
        name = env.get(ENV_PREFIX + field.upper(), f"{ENV_PREFIX}{field.upper()}")
        raise ConfigError(f"{name}: {field or '(root)'}: not a JSON object",
                          hint=f"set one key as {ENV_PREFIX}{field.upper() or 'SECTION'}__KEY=value, or the "
                               "whole section as JSON") from None
    cfg.config_path = cfg_path.resolve() if cfg_path.exists() else None
    return cfg
