"""The environment each AIXSSS service validates at start-up (zod in the real app), as pydantic models.

Field names are the variable names. Secrets are ``SecretStr`` so they never show in a repr.
The variables marked *bundled* are not part of the real contract: only the Python stand-in
under ``app/`` reads them (object storage, release labels, bind address); they are optional
here so that a real deployment's environment validates, and ``load_service_env(...,
bundled=True)`` requires the object-store ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PositiveInt, SecretStr, ValidationError

from aixsss_ops.errors import CheckFailed, UsageError


def _check_port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise ValueError("port must be a number from 0 to 65535") from None


def _redis_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("scheme must be redis: or rediss:")
    _check_port(parts)
    return value


def _http_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
    _check_port(parts)
    return value


def _absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be a path starting with /")
    return value


NonEmpty = Annotated[str, Field(min_length=1)]
Secret32 = Annotated[SecretStr, Field(min_length=32)]
RedisUrl = Annotated[str, Field(min_length=1), AfterValidator(_redis_url)]
HttpEndpoint = Annotated[str, AfterValidator(_http_endpoint)]


class _ServiceEnv(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _BackendEnv(_ServiceEnv):
    """What the api and the worker share (they MUST agree on the key, database, Redis and queue)."""

    NODE_ENV: Literal["development", "test", "production"] = "development"
    DATABASE_URL: NonEmpty
    API_KEY_ENCRYPTION_KEY: Secret32
    REDIS_URL: RedisUrl = "redis://localhost:6379"
    AI_QUEUE_NAME: NonEmpty = "ai-jobs"
    # bundled: the S3-compatible store (MinIO in the real stack) for assets and job artifacts
    S3_ENDPOINT: HttpEndpoint | None = None
    S3_ACCESS_KEY: NonEmpty | None = None
    S3_SECRET_KEY: SecretStr | None = None
    S3_BUCKET: NonEmpty | None = None
    S3_REGION: NonEmpty = "us-east-1"


class ApiEnv(_BackendEnv):
    PORT: PositiveInt = 3001
    JWT_SECRET: Secret32
    CORS_ORIGIN: str | None = None
    # bundled: the release label /api/health reports, the bind address, and a unix socket the
    # local proxy connects to (served in addition to HOST:PORT)
    APP_VERSION: NonEmpty = "dev"
    APP_COLOR: Literal["blue", "green"] = "blue"
    HOST: NonEmpty = "0.0.0.0"
    API_SOCKET: Annotated[str, AfterValidator(_absolute_path)] | None = None


class WorkerEnv(_BackendEnv):
    WORKER_CONCURRENCY: PositiveInt = 4


class WebEnv(_ServiceEnv):
    """Build-time variables of the Vite web app."""

    VITE_DATA_MODE: Literal["api", "local"]
    VITE_API_BASE_PATH: Annotated[str, AfterValidator(_absolute_path)] = "/api"


SERVICE_MODELS: dict[str, type[_ServiceEnv]] = {"api": ApiEnv, "worker": WorkerEnv, "web": WebEnv}
BUNDLED_REQUIRED = ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET")


@dataclass(frozen=True)
class EnvError:
    variable: str
    rule: str

    def __str__(self) -> str:
        return f"{self.variable}: {self.rule}"


class EnvInvalid(CheckFailed):
    """The environment breaks the contract; each error names a variable and a rule, never a value."""

    def __init__(self, errors: list[EnvError], service: str | None = None):
        label = f"{service} environment" if service else "environment"
        super().__init__(f"invalid {label}: " + "; ".join(map(str, errors)))
        self.errors = errors
        self.service = service


def _env_error(error: dict) -> EnvError:
    variable = str(error["loc"][0]) if error["loc"] else "(environment)"
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "missing":
        rule = "required"
    elif kind in ("too_short", "string_too_short"):
        rule = "must not be empty" if ctx["min_length"] == 1 else f"must be at least {ctx['min_length']} characters"
    elif kind == "value_error":
        rule = str(ctx["error"])
    else:
        rule = error["msg"]  # pydantic's text without input_value, which could be a secret
    return EnvError(variable, rule)


def load_service_env(service: str, environ: Mapping[str, str], *, bundled: bool = False) -> _ServiceEnv:
    """The validated environment of ``service`` (api, worker or web), or ``EnvInvalid`` listing every problem.

    ``bundled`` adds the rules of the Python stand-in services (the object store must be configured).
    """
    model = SERVICE_MODELS.get(service)
    if model is None:
        raise UsageError(f"unknown service {service!r}; expected one of {', '.join(SERVICE_MODELS)}")
    values = {name: environ[name] for name in model.model_fields if name in environ}
    env, errors = None, []
    try:
        env = model.model_validate(values)
    except ValidationError as e:
        errors = [_env_error(err) for err in e.errors(include_input=False, include_url=False)]
    if bundled:
        named = {e.variable for e in errors}
        errors += [EnvError(n, "required by the bundled services") for n in BUNDLED_REQUIRED
                   if n in model.model_fields and n not in named and not values.get(n)]
    if errors:
        raise EnvInvalid(errors, service)
    return env
