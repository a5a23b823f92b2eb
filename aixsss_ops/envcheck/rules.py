"""The rules of ``env validate`` (and doctor's env check): each returns findings, never a secret value.

- ``env.contract``: the per-service contract of ../shared/AIXSSS.md (``aixsss_ops.contracts.env``);
- ``env.database-url``, ``env.localhost``: gotchas the contract does not catch;
- ``env.shared``: api and worker MUST share the key, the database, Redis and the queue name;
- ``env.queue``: the stack's env files against ops.toml's ``app.queue`` (a warning: the next deploy writes it);
- ``prod.*`` when ``NODE_ENV=production``: CORS origin, example/default secrets, JWT entropy, the key
  a real 32-byte key (warning), TLS to non-local hosts (warning).
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

from aixsss_ops.findings import Finding

SERVICES = ("api", "worker", "web")
BACKEND = ("api", "worker")
SHARED = ("API_KEY_ENCRYPTION_KEY", "DATABASE_URL", "REDIS_URL", "AI_QUEUE_NAME")
DEFAULTS = {"REDIS_URL": "redis://localhost:6379", "AI_QUEUE_NAME": "ai-jobs"}
SECRET_VARS = ("JWT_SECRET", "API_KEY_ENCRYPTION_KEY", "S3_SECRET_KEY")
# Example values of the real repository's .env.example, MinIO's and Postgres' dev defaults, and the usual suspects.
EXAMPLE_MARKERS = ("please_change_me", "please-change-me", "change_me", "changeme", "change-me", "your_secret",
                   "your-secret", "example", "placeholder")
DEFAULT_SECRETS = {"minio123456", "minioadmin", "postgres", "password", "secret", "admin", "test", "dev"}
WEAK_WORDS = ("secret", "password", "change", "please", "example", "production", "admin", "default", "sample", "token",
              "your", "test")
MIN_SECRET_BITS = 100
KEY_FIX = "generate one: python -c 'import base64,os; print(base64.b64encode(os.urandom(32)).decode())'"
JWT_FIX = "generate one: python -c 'import secrets; print(secrets.token_urlsafe(48))' (or `aixsss-ops env init`)"


def _fix_for(variable: str, rule: str, origin: str) -> str:
    if variable == "API_KEY_ENCRYPTION_KEY" and "at least" in rule:
        return f"{KEY_FIX}, set it in {origin} for the api and the worker"
    if variable == "JWT_SECRET" and "at least" in rule:
        return f"{JWT_FIX}, set it in {origin}"
    if variable == "REDIS_URL":
        return f"use redis://host:6379 (or rediss:// for TLS) in {origin}"
    if variable == "NODE_ENV":
        return f"set NODE_ENV to development, test or production in {origin}"
    if variable in ("PORT", "WORKER_CONCURRENCY"):
        return f"set {variable} to a positive integer in {origin}"
    if variable == "VITE_DATA_MODE":
        return f"set VITE_DATA_MODE=api (or local) in {origin}"
    if rule == "required":
        return f"set {variable} in {origin}"
    return f"correct {variable} in {origin}"


def check_contract(service: str, env: Mapping[str, str], origin: str, *, bundled: bool = False) -> list[Finding]:
    """The service's start-up contract (what zod checks in the real app): one fail per variable and rule."""
    from aixsss_ops.contracts.env import EnvInvalid, load_service_env

    try:
        load_service_env(service, env, bundled=bundled)
    except EnvInvalid as e:
        return [Finding("env.contract", "fail", f"{err.variable}: {err.rule}", _fix_for(err.variable, err.rule, origin),
                        service, err.variable) for err in e.errors]
    return []


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def is_local_host(host: str | None) -> bool:
    """Loopback, or a single-label name (a compose/k8s service name on a private network)."""
    if not host:
        return True
    if host == "localhost" or "." not in host and ":" not in host:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_urls(service: str, env: Mapping[str, str], origin: str) -> list[Finding]:
    """DATABASE_URL must be a postgresql:// URL libpq can use; ``localhost`` can resolve to IPv6 and fail."""
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.errors import UsageError

    out = []
    db = env.get("DATABASE_URL")
    if db:
        try:
            parse_database_url(db, "DATABASE_URL")
        except UsageError as e:
            out.append(Finding("env.database-url", "fail", e.message.replace(db, "(value)"),
                               f"use postgresql://user:password@host:5432/aixsss?schema=public in {origin}",
                               service, "DATABASE_URL"))
    for var in ("DATABASE_URL", "REDIS_URL", "S3_ENDPOINT"):
        if env.get(var) and _host(env[var]) == "localhost":
            out.append(Finding("env.localhost", "warn", f"{var} uses localhost, which can resolve to IPv6 (::1) and fail",
                               f"use 127.0.0.1 instead of localhost in {var} ({origin})", service, var))
    return out


def _value(env: Mapping[str, str], var: str) -> str:
    return env.get(var) or DEFAULTS.get(var, "")


def _describe_shared(var: str, a: str, b: str) -> str:
    from aixsss_ops.output import mask_url

    if var == "API_KEY_ENCRYPTION_KEY":
        from aixsss_ops.crypto import derive_key, fingerprint

        return f"key fingerprints differ: api {fingerprint(derive_key(a))}, worker {fingerprint(derive_key(b))}"
    if var in ("DATABASE_URL", "REDIS_URL"):
        ma, mb = mask_url(a), mask_url(b)
        return "only the passwords differ" if ma == mb else f"api {ma}, worker {mb}"
    return f"api '{a}', worker '{b}'"


def check_shared(envs: Mapping[str, Mapping[str, str]]) -> list[Finding]:
    """The api and the worker MUST agree on the key, the database, Redis and the queue."""
    if not all(s in envs for s in BACKEND):
        return []
    out = []
    api, worker = envs["api"], envs["worker"]
    for var in SHARED:
        a, b = _value(api, var), _value(worker, var)
        if not a or not b:
            continue  # a missing required variable is the contract's finding
        same = a == b
        if var == "API_KEY_ENCRYPTION_KEY":
            from aixsss_ops.crypto import derive_key

            same = derive_key(a) == derive_key(b)
        if not same:
            why = {"API_KEY_ENCRYPTION_KEY": "the worker cannot decrypt the provider keys the api stored",
                   "AI_QUEUE_NAME": "the worker never sees the jobs the api enqueues",
                   "REDIS_URL": "the worker never sees the jobs the api enqueues",
                   "DATABASE_URL": "the worker reads and writes another database than the api"}[var]
            what = _describe_shared(var, a, b)
            out.append(Finding("env.shared", "fail", f"api and worker differ on {var} ({what}): {why}",
                               f"set the same {var} in the api's and the worker's environment, then restart both",
                               "api+worker", var))
    return out


def check_queue(envs: Mapping[str, Mapping[str, str]], queue: str, origins: Mapping[str, str]) -> list[Finding]:
    """The queue name the api and the worker use against ops.toml's ``app.queue``: ``deploy`` (and ``stack up``)
    write ops.toml's into the env files, so until then the running services use another queue than ops.toml says."""
    out = []
    for svc in BACKEND:
        if svc not in envs:
            continue
        have = _value(envs[svc], "AI_QUEUE_NAME")
        if have and have != queue:
            out.append(Finding("env.queue", "warn", f"AI_QUEUE_NAME is '{have}' but ops.toml app.queue is '{queue}': "
                               f"the {svc} uses '{have}' until the next deploy writes '{queue}'",
                               f"deploy to apply '{queue}' (`aixsss-ops deploy --force` for the live release), or set "
                               f"app.queue back to '{have}' (or AI_QUEUE_NAME in {origins.get(svc, 'its environment')})",
                               svc, "AI_QUEUE_NAME"))
    return out


def entropy_bits(value: str) -> float:
    """A conservative estimate of a secret's entropy: per-character Shannon entropy times length, zero when the
    string is built from repeats, sequences or words (``jwt-secret-jwt-secret…``, ``0123…``, ``my-secret-key…``)."""
    if not value:
        return 0.0
    n = len(value)
    counts = Counter(value)
    bits = n * -sum(c / n * math.log2(c / n) for c in counts.values())
    grams = [value[i:i + 3] for i in range(n - 2)]
    if grams and len(set(grams)) / len(grams) < 0.9:  # repeated chunks
        return 0.0
    run = best = 1
    for x, y in zip(value, value[1:], strict=False):
        run = run + 1 if abs(ord(y) - ord(x)) == 1 else 1
        best = max(best, run)
    if best >= 5:  # abcde / 12345
        return 0.0
    low = value.lower()
    if sum(w in low for w in WEAK_WORDS) >= 2:
        return 0.0
    return bits


def _is_example(value: str) -> bool:
    low = value.lower()
    return low in DEFAULT_SECRETS or any(m in low for m in EXAMPLE_MARKERS)


def _db_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def check_production(service: str, env: Mapping[str, str], origin: str) -> list[Finding]:
    """Rules that apply when ``NODE_ENV=production``."""
    if env.get("NODE_ENV") != "production":
        return []
    out = []
    if service == "api":
        cors = (env.get("CORS_ORIGIN") or "").strip()
        if not cors:
            out.append(Finding("prod.cors", "fail", "CORS_ORIGIN is not set: the api allows only http://localhost:5173",
                               f"set CORS_ORIGIN to the web app's origin, e.g. https://app.example.com, in {origin}",
                               service, "CORS_ORIGIN"))
        elif "*" in cors:
            out.append(Finding("prod.cors", "fail", "CORS_ORIGIN is a wildcard: with credentials allowed, any site "
                               "can call the api as a signed-in user",
                               f"set CORS_ORIGIN to the web app's exact origin in {origin}", service, "CORS_ORIGIN"))
    for var in SECRET_VARS:
        value = env.get(var)
        if value and _is_example(value):
            out.append(Finding("prod.default-secret", "fail", f"{var} is an example or default value ({len(value)} chars)",
                               f"replace it with a strong random value in {origin}"
                               + (" (for the key: rotate it with `aixsss-ops keys rotate`)"
                                  if var == "API_KEY_ENCRYPTION_KEY" else ""), service, var))
    db_pw = _db_password(env.get("DATABASE_URL") or "")
    if db_pw is not None and _is_example(db_pw):
        out.append(Finding("prod.default-secret", "fail", "DATABASE_URL carries a default password",
                           f"give the database role a strong password and update DATABASE_URL in {origin}",
                           service, "DATABASE_URL"))
    jwt = env.get("JWT_SECRET")
    if service == "api" and jwt and len(jwt) >= 32 and not _is_example(jwt):
        bits = entropy_bits(jwt)
        if bits < MIN_SECRET_BITS:
            out.append(Finding("prod.weak-secret", "fail",
                               f"JWT_SECRET has about {bits:.0f} bits of entropy (needs {MIN_SECRET_BITS}): "
                               "it is built from words, repeats or sequences",
                               f"{JWT_FIX}, set it in {origin}", service, "JWT_SECRET"))
    key = env.get("API_KEY_ENCRYPTION_KEY")
    if key and len(key) >= 32:
        from aixsss_ops.crypto import is_real_32_byte_key

        if not is_real_32_byte_key(key):
            out.append(Finding("prod.key-fallback", "warn", "API_KEY_ENCRYPTION_KEY is not base64 of 32 bytes: "
                               "the services use SHA-256 of the string instead (works, but weaker)",
                               f"{KEY_FIX} and move to it with `aixsss-ops keys rotate`", service,
                               "API_KEY_ENCRYPTION_KEY"))
    out += _tls(service, env, origin)
    return out


def _tls(service: str, env: Mapping[str, str], origin: str) -> list[Finding]:
    out = []
    redis = env.get("REDIS_URL")
    if redis and redis.startswith("redis://") and not is_local_host(_host(redis)):
        out.append(Finding("prod.tls", "warn", f"REDIS_URL reaches {_host(redis)} without TLS",
                           f"use rediss:// in {origin}", service, "REDIS_URL"))
    db = env.get("DATABASE_URL")
    if db and not is_local_host(_host(db)):
        try:
            mode = dict(parse_qsl(urlsplit(db).query)).get("sslmode")
        except ValueError:
            mode = None
        if mode not in ("require", "verify-ca", "verify-full"):
            out.append(Finding("prod.tls", "warn", f"DATABASE_URL reaches {_host(db)} without sslmode=require "
                               "(or verify-full)", f"add sslmode=require to DATABASE_URL in {origin}", service,
                               "DATABASE_URL"))
    s3 = env.get("S3_ENDPOINT")
    if s3 and s3.startswith("http://") and not is_local_host(_host(s3)):
        out.append(Finding("prod.tls", "warn", f"S3_ENDPOINT reaches {_host(s3)} over plain http",
                           f"use https:// in {origin}", service, "S3_ENDPOINT"))
    return out


def validate(envs: Mapping[str, Mapping[str, str]], origins: Mapping[str, str] | None = None, *,
             bundled: bool = False, queue: str | None = None) -> list[Finding]:
    """Every rule over the services given (``{'api': {...}, 'worker': {...}, 'web': {...}}``); problems only.
    ``queue``: ops.toml's ``app.queue``, for the stack's own env files."""
    origins = origins or {}
    out: list[Finding] = []
    for svc in SERVICES:
        if svc not in envs:
            continue
        env, origin = envs[svc], origins.get(svc, f"the {svc} environment")
        out += check_contract(svc, env, origin, bundled=bundled and svc != "web")
        if svc in BACKEND:
            out += check_urls(svc, env, origin)
            out += check_production(svc, env, origin)
    out += check_shared(envs)
    if queue is not None:
        out += check_queue(envs, queue, origins)
    return out
