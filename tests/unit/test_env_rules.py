"""env validate's rules: one bad env that trips each rule, and good envs that pass every rule."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from aixsss_ops.envcheck.diff import diff
from aixsss_ops.envcheck.rules import entropy_bits, is_local_host, validate
from aixsss_ops.envcheck.sources import load, parse_env_file_args
from aixsss_ops.errors import UsageError
from aixsss_ops.output import is_secret_name

KEY = base64.b64encode(secrets.token_bytes(32)).decode()
JWT = secrets.token_urlsafe(48)
S3_SECRET = secrets.token_urlsafe(24)
DB = f"postgresql://aixsss:{secrets.token_urlsafe(16)}@127.0.0.1:5432/aixsss?schema=public"
SECRETS = (KEY, JWT, S3_SECRET, DB.split(":")[2].split("@")[0])


def good(production: bool = False) -> dict[str, dict[str, str]]:
    shared = {"NODE_ENV": "production" if production else "development", "DATABASE_URL": DB,
              "REDIS_URL": "redis://127.0.0.1:6379", "AI_QUEUE_NAME": "ai-jobs", "API_KEY_ENCRYPTION_KEY": KEY,
              "S3_ENDPOINT": "http://127.0.0.1:9000", "S3_ACCESS_KEY": "aixsss", "S3_SECRET_KEY": S3_SECRET,
              "S3_BUCKET": "assets"}
    return {"api": {**shared, "JWT_SECRET": JWT, "PORT": "3001", "CORS_ORIGIN": "https://app.example.com"},
            "worker": {**shared, "WORKER_CONCURRENCY": "4"},
            "web": {"VITE_DATA_MODE": "api", "VITE_API_BASE_PATH": "/api"}}


def with_(envs, service, **changes):
    out = {s: dict(e) for s, e in envs.items()}
    for k, v in changes.items():
        if v is None:
            out[service].pop(k, None)
        else:
            out[service][k] = v
    return out


def assert_no_secret(findings) -> None:
    text = json.dumps([f.to_dict() for f in findings])
    for s in SECRETS:
        assert s not in text


@pytest.mark.parametrize("production", [False, True])
def test_good_env_passes_every_rule(production):
    assert validate(good(production)) == []


# (service, variable, bad value, rule id, status, production)
CASES = [
    ("api", "DATABASE_URL", None, "env.contract", "fail", False),  # required
    ("api", "JWT_SECRET", "short-secret", "env.contract", "fail", False),  # >= 32 chars
    ("worker", "API_KEY_ENCRYPTION_KEY", "too-short-key", "env.contract", "fail", False),
    ("api", "REDIS_URL", "http://127.0.0.1:6379", "env.contract", "fail", False),  # scheme redis: / rediss:
    ("worker", "REDIS_URL", "redis://127.0.0.1:notaport", "env.contract", "fail", False),
    ("api", "NODE_ENV", "staging", "env.contract", "fail", False),
    ("api", "PORT", "-1", "env.contract", "fail", False),
    ("worker", "WORKER_CONCURRENCY", "0", "env.contract", "fail", False),
    ("api", "AI_QUEUE_NAME", "", "env.contract", "fail", False),
    ("web", "VITE_DATA_MODE", "remote", "env.contract", "fail", False),
    ("web", "VITE_API_BASE_PATH", "api", "env.contract", "fail", False),
    ("api", "DATABASE_URL", "mysql://u:p@127.0.0.1/aixsss", "env.database-url", "fail", False),
    ("api", "REDIS_URL", "redis://localhost:6379", "env.localhost", "warn", False),
    ("api", "CORS_ORIGIN", None, "prod.cors", "fail", True),
    ("api", "CORS_ORIGIN", "*", "prod.cors", "fail", True),
    ("api", "JWT_SECRET", "please_change_me_to_a_long_random_string_0123", "prod.default-secret", "fail", True),
    ("worker", "S3_SECRET_KEY", "minio123456", "prod.default-secret", "fail", True),
    ("api", "DATABASE_URL", "postgresql://postgres:postgres@127.0.0.1:5432/aixsss?schema=public",
     "prod.default-secret", "fail", True),
    ("api", "JWT_SECRET", "jwt-secret-jwt-secret-jwt-secret-0123", "prod.weak-secret", "fail", True),
    ("api", "JWT_SECRET", "abcdefghijklmnopqrstuvwxyz0123456789", "prod.weak-secret", "fail", True),
    ("api", "JWT_SECRET", "my-super-secret-jwt-key-for-production-use", "prod.weak-secret", "fail", True),
    ("api", "API_KEY_ENCRYPTION_KEY", "correct horse battery staple, not a base64 key!", "prod.key-fallback", "warn", True),
    ("worker", "REDIS_URL", "redis://redis.internal.example.com:6379", "prod.tls", "warn", True),
    ("api", "DATABASE_URL", "postgresql://aixsss:Xq8vLr2pTz9w@db.example.com:5432/aixsss?schema=public",
     "prod.tls", "warn", True),
    ("worker", "S3_ENDPOINT", "http://minio.example.com:9000", "prod.tls", "warn", True),
]


@pytest.mark.parametrize(("service", "variable", "value", "rule", "status", "production"), CASES,
                         ids=[f"{c[3]}-{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_each_rule_trips_on_a_bad_env(service, variable, value, rule, status, production):
    envs = with_(good(production), service, **{variable: value})
    if rule in ("prod.tls",) and variable in ("REDIS_URL", "DATABASE_URL"):  # keep api and worker in agreement
        envs = with_(envs, "worker" if service == "api" else "api", **{variable: value})
    found = validate(envs, {service: f"/etc/aixsss/{service}.env"})
    hits = [f for f in found if f.check == rule and f.variable == variable and f.service == service]
    assert hits, found
    assert hits[0].status == status
    assert hits[0].fix  # a concrete way to fix it
    if value and is_secret_name(variable):
        assert value not in json.dumps([f.to_dict() for f in found])  # never a secret's value
    assert_no_secret(found)


def test_production_rules_do_not_apply_in_development():
    envs = with_(good(False), "api", CORS_ORIGIN="*", JWT_SECRET="jwt-secret-jwt-secret-jwt-secret-0123")
    assert validate(envs) == []


@pytest.mark.parametrize("variable", ["API_KEY_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "AI_QUEUE_NAME"])
def test_api_and_worker_must_share(variable):
    other = {"API_KEY_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
             "DATABASE_URL": DB.replace("/aixsss?", "/other?"), "REDIS_URL": "redis://127.0.0.1:6380",
             "AI_QUEUE_NAME": "other-jobs"}[variable]
    found = validate(with_(good(), "worker", **{variable: other}))
    hits = [f for f in found if f.check == "env.shared" and f.variable == variable]
    assert len(hits) == 1 and hits[0].status == "fail", found
    if variable in ("API_KEY_ENCRYPTION_KEY", "DATABASE_URL"):
        assert other not in hits[0].message
    assert_no_secret(found)


def test_shared_key_compares_derived_keys_not_spelling():
    key = base64.b64encode(bytes([0xFB, 0xFF, 0xBF]) * 10 + b"\x01\x02").decode()
    url_safe = key.replace("+", "-").replace("/", "_")  # Node decodes both alphabets to the same bytes
    assert url_safe != key
    envs = with_(with_(good(), "api", API_KEY_ENCRYPTION_KEY=key), "worker", API_KEY_ENCRYPTION_KEY=url_safe)
    assert validate(envs) == []


def test_only_password_differs_is_named_without_the_passwords():
    other = DB.replace(DB.split(":")[2].split("@")[0], "another-password-123")
    found = validate(with_(good(), "worker", DATABASE_URL=other))
    assert "only the passwords differ" in found[0].message
    assert "another-password-123" not in found[0].message


def test_defaults_count_for_shared_values():
    envs = with_(good(), "api", AI_QUEUE_NAME=None)
    envs = with_(envs, "worker", AI_QUEUE_NAME="ai-jobs")
    assert validate(envs) == []


def test_entropy_estimate():
    assert entropy_bits(secrets.token_urlsafe(48)) > 200
    assert entropy_bits("a" * 40) == 0
    assert entropy_bits("0123456789" * 4) == 0


def test_local_hosts():
    assert is_local_host("127.0.0.1") and is_local_host("::1") and is_local_host("localhost")
    assert is_local_host("postgres")  # a compose service name
    assert not is_local_host("db.example.com") and not is_local_host("10.1.2.3")


def test_malformed_env_file_names_line_and_variable(tmp_path):
    p = tmp_path / "api.env"
    p.write_text(f"NODE_ENV=production\nJWT_SECRET {JWT}\n")
    src = load(["api"], {}, {"api": p}, None)
    assert src.envs == {}
    [f] = src.problems
    assert f.check == "env.file" and f.status == "fail"
    assert f"{p}:2" in f.message and f.variable == "JWT_SECRET"
    assert JWT not in json.dumps(f.to_dict())


def test_missing_env_file_is_a_finding(tmp_path):
    src = load(["worker"], {}, {"worker": tmp_path / "nope.env"}, None)
    assert src.problems[0].check == "env.file" and "does not exist" in src.problems[0].message


def test_process_environment_overrides_the_file(tmp_path):
    p = tmp_path / "worker.env"
    p.write_text("AI_QUEUE_NAME=from-file\nWORKER_CONCURRENCY=2\n")
    src = load(["worker"], {}, {"worker": p}, {"AI_QUEUE_NAME": "from-env"})
    assert src.envs["worker"]["AI_QUEUE_NAME"] == "from-env"
    assert src.envs["worker"]["WORKER_CONCURRENCY"] == "2"
    assert "process environment" in src.origins["worker"]


def test_env_file_arguments():
    assert parse_env_file_args(["api=/a.env", "worker=/w.env"], "all") == {"api": Path("/a.env"),
                                                                          "worker": Path("/w.env")}
    assert parse_env_file_args(["/x.env"], "web")["web"].name == "x.env"
    with pytest.raises(UsageError):
        parse_env_file_args(["/x.env"], "all")


def test_diff_masks_secrets_and_names_what_differs():
    a, b = good()["api"], good()["worker"]
    b = {**b, "API_KEY_ENCRYPTION_KEY": base64.b64encode(secrets.token_bytes(32)).decode(), "AI_QUEUE_NAME": "x"}
    rows = {r["variable"]: r for r in diff(a, b)}
    assert rows["JWT_SECRET"]["change"] == "only in A" and rows["JWT_SECRET"]["a"].startswith("****")
    assert rows["WORKER_CONCURRENCY"]["change"] == "only in B"
    assert rows["AI_QUEUE_NAME"]["a"] == "ai-jobs" and rows["AI_QUEUE_NAME"]["b"] == "x"
    assert "key " in rows["API_KEY_ENCRYPTION_KEY"]["a"]
    assert "DATABASE_URL" not in rows
    text = json.dumps(rows)
    for s in (*SECRETS, b["API_KEY_ENCRYPTION_KEY"]):
        assert s not in text
