"""The services' environment contract: rules, defaults, and errors that never echo a value."""

from __future__ import annotations

import pytest

from aixsss_ops.contracts.env import ApiEnv, EnvInvalid, WebEnv, WorkerEnv, load_service_env
from aixsss_ops.errors import CheckFailed, UsageError

JWT = "jwt-secret-jwt-secret-jwt-secret-0123"
KEY = "key-material-key-material-key-material-42"
S3 = {"S3_ENDPOINT": "http://127.0.0.1:9000", "S3_ACCESS_KEY": "minio", "S3_SECRET_KEY": "minio-secret-123456",
      "S3_BUCKET": "aixsss"}


def api_environ(**overrides) -> dict[str, str]:
    env = {"DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/aixsss?schema=public", "JWT_SECRET": JWT,
           "API_KEY_ENCRYPTION_KEY": KEY}
    return {**env, **overrides}


def worker_environ(**overrides) -> dict[str, str]:
    env = api_environ(**overrides)
    env.pop("JWT_SECRET", None)
    return env


def invalid(service: str, environ: dict[str, str], **kw) -> EnvInvalid:
    with pytest.raises(EnvInvalid) as info:
        load_service_env(service, environ, **kw)
    return info.value


def rules(error: EnvInvalid) -> dict[str, str]:
    return {e.variable: e.rule for e in error.errors}


def test_api_defaults():
    env = load_service_env("api", api_environ())
    assert isinstance(env, ApiEnv)
    assert (env.NODE_ENV, env.PORT, env.REDIS_URL, env.AI_QUEUE_NAME, env.CORS_ORIGIN) == (
        "development", 3001, "redis://localhost:6379", "ai-jobs", None)
    assert (env.HOST, env.APP_VERSION, env.APP_COLOR, env.S3_REGION, env.S3_ENDPOINT) == (
        "0.0.0.0", "dev", "blue", "us-east-1", None)
    assert env.API_KEY_ENCRYPTION_KEY.get_secret_value() == KEY
    assert KEY not in repr(env) and JWT not in repr(env)


def test_worker_defaults_and_values():
    env = load_service_env("worker", worker_environ(WORKER_CONCURRENCY="8", AI_QUEUE_NAME="jobs",
                                                    REDIS_URL="rediss://:pw@redis.internal"))
    assert isinstance(env, WorkerEnv)
    assert (env.WORKER_CONCURRENCY, env.AI_QUEUE_NAME, env.REDIS_URL) == (8, "jobs", "rediss://:pw@redis.internal")
    assert load_service_env("worker", worker_environ()).WORKER_CONCURRENCY == 4


def test_web():
    env = load_service_env("web", {"VITE_DATA_MODE": "api"})
    assert isinstance(env, WebEnv) and env.VITE_API_BASE_PATH == "/api"
    assert rules(invalid("web", {"VITE_DATA_MODE": "remote", "VITE_API_BASE_PATH": "api"})).keys() == {
        "VITE_DATA_MODE", "VITE_API_BASE_PATH"}
    assert rules(invalid("web", {})) == {"VITE_DATA_MODE": "required"}


def test_secrets_shorter_than_32_characters_are_rejected_without_echo():
    short_jwt, short_key = "short-jwt-secret-value", "short-encryption-key-value-31ch"
    error = invalid("api", api_environ(JWT_SECRET=short_jwt, API_KEY_ENCRYPTION_KEY=short_key))
    assert rules(error) == {"JWT_SECRET": "must be at least 32 characters",
                            "API_KEY_ENCRYPTION_KEY": "must be at least 32 characters"}
    assert isinstance(error, CheckFailed) and error.exit_code == 3
    for text in (str(error), repr(error.errors)):
        assert short_jwt not in text and short_key not in text
    assert load_service_env("api", api_environ(JWT_SECRET="x" * 32)).JWT_SECRET.get_secret_value() == "x" * 32


def test_missing_required_variables_are_named():
    assert rules(invalid("api", {})) == {
        "DATABASE_URL": "required", "JWT_SECRET": "required", "API_KEY_ENCRYPTION_KEY": "required"}
    assert rules(invalid("worker", {})) == {"DATABASE_URL": "required", "API_KEY_ENCRYPTION_KEY": "required"}
    assert rules(invalid("api", api_environ(DATABASE_URL=""))) == {"DATABASE_URL": "must not be empty"}


@pytest.mark.parametrize("url", ["http://:hunter2-secret@127.0.0.1:6379", "127.0.0.1:6379", "redis://h:notaport"])
def test_redis_url_rules(url):
    error = invalid("worker", worker_environ(REDIS_URL=url))
    assert list(rules(error)) == ["REDIS_URL"]
    assert url not in str(error) and "hunter2" not in str(error)


def test_redis_url_accepts_both_schemes_and_no_port():
    for url in ("redis://127.0.0.1", "rediss://user:pw@cache:6380/2"):
        env = load_service_env("api", api_environ(REDIS_URL=url))
        assert url == env.REDIS_URL


def test_node_env_is_an_enum():
    error = invalid("api", api_environ(NODE_ENV="staging"))
    assert list(rules(error)) == ["NODE_ENV"]
    assert "production" in rules(error)["NODE_ENV"] and "staging" not in str(error)
    assert load_service_env("api", api_environ(NODE_ENV="production")).NODE_ENV == "production"


@pytest.mark.parametrize("value", ["0", "-1", "http", "3.5"])
def test_port_and_concurrency_are_positive_integers(value):
    assert list(rules(invalid("api", api_environ(PORT=value)))) == ["PORT"]
    assert list(rules(invalid("worker", worker_environ(WORKER_CONCURRENCY=value)))) == ["WORKER_CONCURRENCY"]


def test_empty_queue_name_is_rejected():
    assert rules(invalid("worker", worker_environ(AI_QUEUE_NAME=""))) == {"AI_QUEUE_NAME": "must not be empty"}


def test_bundled_extras_are_optional_for_the_real_contract_but_required_for_the_bundled_services():
    assert load_service_env("worker", worker_environ()).S3_BUCKET is None
    error = invalid("worker", worker_environ(S3_ACCESS_KEY="minio"), bundled=True)
    assert rules(error) == {name: "required by the bundled services"
                            for name in ("S3_ENDPOINT", "S3_SECRET_KEY", "S3_BUCKET")}
    env = load_service_env("api", api_environ(**S3, APP_COLOR="green", APP_VERSION="1.2.3"), bundled=True)
    assert (env.S3_ENDPOINT, env.S3_BUCKET, env.APP_COLOR, env.APP_VERSION) == (
        "http://127.0.0.1:9000", "aixsss", "green", "1.2.3")
    assert env.S3_SECRET_KEY.get_secret_value() == S3["S3_SECRET_KEY"]


def test_bundled_extras_rules():
    error = invalid("api", api_environ(**{**S3, "S3_ENDPOINT": "ftp://store"}, APP_COLOR="red"), bundled=True)
    assert rules(error).keys() == {"S3_ENDPOINT", "APP_COLOR"}
    error = invalid("api", api_environ(**{**S3, "S3_ENDPOINT": ""}), bundled=True)
    assert list(rules(error)) == ["S3_ENDPOINT"]


def test_unknown_variables_are_ignored_and_unknown_services_refused():
    assert load_service_env("api", api_environ(PATH="/usr/bin", SOMETHING="else")).PORT == 3001
    with pytest.raises(UsageError):
        load_service_env("scheduler", {})
