"""The environment each AIXSSS service validates at start-up (zod in the real app), as msgspec models.

Field names are the variable names. Secrets are ``SecretStr`` so they never show in a repr.
The variables marked *bundled* are not part of the real contract: only the Python stand-in
under ``app/`` reads them (object storage, release labels, bind address); they are optional
here so that a real deployment's environment validates, and ``load_service_env(...,
bundled=True)`` requires the object-store ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from aixsss_ops.errors import CheckFailed, UsageError
from aixsss_ops.validate import SecretStr, ValidationError, convert, located


def _check_port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        raise ValueError("port must be a number from 0 to 65535") from None


def _redis_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("scheme must be redis: or rediss:")
    _check_port(parts)


def _http_endpoint(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:9000")
    _check_port(parts)


def _absolute_path(value: str) -> None:
    if not value.startswith("/"):
        raise ValueError("must be a path starting with /")


NonEmpty = Annotated[str, Meta(min_length=1)]
PositiveInt = Annotated[int, Meta(gt=0)]
Secret32 = SecretStr  # at least 32 characters: _ServiceEnv.MIN_LENGTH


class _ServiceEnv(msgspec.Struct, frozen=True, kw_only=True):
    """Each variable is converted on its own (so that every problem is reported), then ``CHECKS`` run on the
    values that are set. Variables that are not fields are ignored."""

    CHECKS: ClassVar[dict[str, Any]] = {}  # variable -> function raising ValueError on a bad value
    MIN_LENGTH: ClassVar[dict[str, int]] = {}  # secret variable -> its least length


class _BackendEnv(_ServiceEnv, frozen=True, kw_only=True):
    """What the api and the worker share (they MUST agree on the key, database, Redis and queue)."""

    CHECKS: ClassVar[dict[str, Any]] = {"REDIS_URL": _redis_url, "S3_ENDPOINT": _http_endpoint}
    MIN_LENGTH: ClassVar[dict[str, int]] = {"API_KEY_ENCRYPTION_KEY": 32}

    NODE_ENV: Literal["development", "test", "production"] = "development"
    DATABASE_URL: NonEmpty
    API_KEY_ENCRYPTION_KEY: Secret32
    REDIS_URL: NonEmpty = "redis://localhost:6379"
    AI_QUEUE_NAME: NonEmpty = "ai-jobs"
    # bundled: the S3-compatible store (MinIO in the real stack) for assets and job artifacts
    S3_ENDPOINT: str | None = None
    S3_ACCESS_KEY: NonEmpty | None = None
    S3_SECRET_KEY: SecretStr | None = None
    S3_BUCKET: NonEmpty | None = None
    S3_REGION: NonEmpty = "us-east-1"


class ApiEnv(_BackendEnv, frozen=True, kw_only=True):
    CHECKS: ClassVar[dict[str, Any]] = {**_BackendEnv.CHECKS, "API_SOCKET": _absolute_path}
    MIN_LENGTH: ClassVar[dict[str, int]] = {**_BackendEnv.MIN_LENGTH, "JWT_SECRET": 32}

    PORT: PositiveInt = 3001
    JWT_SECRET: Secret32
    CORS_ORIGIN: str | None = None
    # bundled: the release label /api/health reports, the bind address, and a unix socket the
    # local proxy connects to (served in addition to HOST:PORT)
    APP_VERSION: NonEmpty = "dev"
    APP_COLOR: Literal["blue", "green"] = "blue"
    HOST: NonEmpty = "0.0.0.0"
    API_SOCKET: str | None = None


class WorkerEnv(_BackendEnv, frozen=True, kw_only=True):
    WORKER_CONCURRENCY: PositiveInt = 4


class WebEnv(_ServiceEnv, frozen=True, kw_only=True):
    """Build-time variables of the Vite web app."""

    CHECKS: ClassVar[dict[str, Any]] = {"VITE_API_BASE_PATH": _absolute_path}

    VITE_DATA_MODE: Literal["api", "local"]
    VITE_API_BASE_PATH: str = "/api"


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


def _rule(model: type[_ServiceEnv], name: str, tp: Any, raw: str) -> tuple[Any, str | None]:
    """(value, None), or (None, the rule ``raw`` breaks) — never the value itself, which could be a secret."""
    try:
        value = convert(raw, tp)
    except ValidationError as e:
        msg = located(e, tp, raw)[1]
        if msg.endswith("length >= 1"):
            return None, "must not be empty"
        return None, msg
    secret = value.get_secret_value() if isinstance(value, SecretStr) else None
    least = model.MIN_LENGTH.get(name)
    if least and secret is not None and len(secret) < least:
        return None, f"must be at least {least} characters"
    check = model.CHECKS.get(name)
    if check is not None and value is not None:
        try:
            check(value)
        except ValueError as e:
            return None, str(e)
    return value, None


def load_service_env(service: str, environ: Mapping[str, str], *, bundled: bool = False) -> _ServiceEnv:
    """The validated environment of ``service`` (api, worker or web), or ``EnvInvalid`` listing every problem.

    ``bundled`` adds the rules of the Python stand-in services (the object store must be configured).
    """
    model = SERVICE_MODELS.get(service)
    if model is None:
        raise UsageError(f"unknown service {service!r}; expected one of {', '.join(SERVICE_MODELS)}")
    fields = msgspec.structs.fields(model)
    required = {f.name for f in fields if f.required}
    hints = {f.name: f.type for f in fields}
    values, errors = {}, []
    for name in model.__struct_fields__:
        if name not in environ:
            if name in required:
                errors.append(EnvError(name, "required"))
            continue
        value, rule = _rule(model, name, hints[name], environ[name])
        if rule is not None:
            errors.append(EnvError(name, rule))
        else:
            values[name] = value
    if bundled:
        named = {e.variable for e in errors}
        errors += [EnvError(n, "required by the bundled services") for n in BUNDLED_REQUIRED
                   if n in model.__struct_fields__ and n not in named and not environ.get(n)]
    if errors:
        raise EnvInvalid(errors, service)
    return model(**values)
