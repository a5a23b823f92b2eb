"""Every command resolves each connection setting the same way from the same inputs: the flag, then the process
environment, then api.env, then worker.env, then ops.toml / the embedded stack (context/settings.py).

Each row gives the inputs (a flag, the process environment, the two env files, whether an embedded stack's
secrets exist) and the value the documented precedence gives; every consumer (migrate, backup, keys, queue,
doctor, env validate) is asked through the function it really uses and must answer that value."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.deployment import Deployment
from aixsss_ops.doctor.context import Context
from aixsss_ops.errors import UsageError
from aixsss_ops.keys import service as keys
from aixsss_ops.queue.conn import target
from aixsss_ops.usecases import backup, migrate
from aixsss_ops.usecases.env import validate_env

EMBEDDED_APP_PW, EMBEDDED_SU_PW = "app-pw-0123456789", "su-pw-0123456789"
K_FLAG, K_ENV, K_API, K_WORKER = ("f" * 40, "e" * 40, "a" * 40, "w" * 40)


def make(tmp_path, *, environ=None, api=None, worker=None, flags=None, embedded=False, **cfg_kw) -> Deployment:
    cfg = OpsConfig(state_dir=tmp_path / "state", **cfg_kw)
    env_dir = cfg.state / "env"
    env_dir.mkdir(parents=True)
    for name, env in (("api", api), ("worker", worker)):
        if env is not None:
            (env_dir / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    if embedded:
        (cfg.state / "secrets").mkdir()
        (cfg.state / "secrets" / "stack.json").write_text(json.dumps(
            {"postgres_superuser_password": EMBEDDED_SU_PW, "postgres_app_password": EMBEDDED_APP_PW}))
    return Deployment(cfg, environ=environ or {}, flags=flags or {})


def embedded_url(cfg: OpsConfig, user: str, pw: str) -> str:
    return f"postgresql://{user}:{pw}@{cfg.host}:{cfg.ports.postgres}/{cfg.postgres.database}?schema=public"


DB = "DATABASE_URL"
# (case, inputs, expected source): the value expected is the one written in that source
CASES = [
    ("embedded only", {"embedded": True}, "embedded"),
    ("worker.env", {"worker": "w", "embedded": True}, "worker"),
    ("api.env over worker.env", {"api": "a", "worker": "w", "embedded": True}, "api"),
    ("environment over the files", {"environ": "e", "api": "a", "worker": "w", "embedded": True}, "environ"),
    ("flag over everything", {"flag": "f", "environ": "e", "api": "a", "worker": "w", "embedded": True}, "flag"),
    ("environment, no stack", {"environ": "e"}, "environ"),
]


def db_url(tag: str) -> str:
    return f"postgresql://u{tag}:pw{tag}x1234567@db-{tag}:5432/app?schema=public"


def redis_url(tag: str) -> str:
    return f"redis://:pw{tag}x1234567@redis-{tag}:6379/0"


def build(tmp_path, inputs: dict, **cfg_kw) -> Deployment:
    def env_of(tag: str) -> dict[str, str]:
        return {DB: db_url(tag), "REDIS_URL": redis_url(tag), "AI_QUEUE_NAME": f"q-{tag}",
                "S3_ENDPOINT": f"http://s3-{tag}:9000", "S3_ACCESS_KEY": f"ak-{tag}", "S3_SECRET_KEY": f"sk-{tag}-123456",
                "S3_BUCKET": f"bucket-{tag}", "S3_REGION": f"region-{tag}",
                "API_KEY_ENCRYPTION_KEY": {"e": K_ENV, "a": K_API, "w": K_WORKER}[tag]}

    flags = {}
    if "flag" in inputs:
        flags = {DB: db_url("f"), "REDIS_URL": redis_url("f"), "AI_QUEUE_NAME": "q-f", "API_KEY_ENCRYPTION_KEY": K_FLAG}
    return make(tmp_path, environ=env_of("e") if "environ" in inputs else {},
                api=env_of("a") if "api" in inputs else None, worker=env_of("w") if "worker" in inputs else None,
                flags=flags, embedded=inputs.get("embedded", False), **cfg_kw)


def expected(dep: Deployment, source: str) -> dict[str, str]:
    c = dep.cfg
    if source == "embedded":
        return {DB: embedded_url(c, c.postgres.user, EMBEDDED_APP_PW), "REDIS_URL": f"redis://{c.host}:{c.ports.redis}",
                "AI_QUEUE_NAME": c.app.queue, "S3_ENDPOINT": f"http://{c.host}:{c.ports.s3}",
                "S3_REGION": c.s3.region, "S3_BUCKET": c.s3.bucket, "API_KEY_ENCRYPTION_KEY": None}
    tag = source[0]
    out = {DB: db_url(tag), "REDIS_URL": redis_url(tag), "AI_QUEUE_NAME": f"q-{tag}",
           "S3_ENDPOINT": f"http://s3-{tag}:9000", "S3_REGION": f"region-{tag}", "S3_BUCKET": f"bucket-{tag}",
           "API_KEY_ENCRYPTION_KEY": {"f": K_FLAG, "e": K_ENV, "a": K_API, "w": K_WORKER}[tag]}
    if source == "flag":  # S3 has no flags: the next source down (the environment) gives it
        out.update({k: v for k, v in expected(dep, "environ").items() if k.startswith("S3_")})
    return out


@pytest.mark.parametrize(("case", "inputs", "source"), CASES, ids=[c[0] for c in CASES])
def test_every_consumer_resolves_every_setting_alike(tmp_path, case, inputs, source):
    dep = build(tmp_path, inputs)
    want = expected(dep, source)
    doctor = Context(dep)
    q = target(dep)
    backup_pg = backup.database(dep)
    app = urlsplit(want[DB])

    # DATABASE_URL: migrate and keys use the app's URL; doctor too; backup the same database (as the embedded
    # superuser where it is the embedded stack's)
    assert migrate.database_url(dep) == want[DB]
    assert doctor.database_url == want[DB]
    assert (backup_pg.host, backup_pg.port, backup_pg.database) == (app.hostname, app.port, app.path.lstrip("/"))
    su = urlsplit(dep.admin_database.value)
    assert su.password == (EMBEDDED_SU_PW if source == "embedded" else app.password)  # env files name db-a, db-w
    # REDIS_URL and the queue: the queue commands, the rotation's queue pause, doctor
    assert (q.redis_url, q.queue) == (want["REDIS_URL"], want["AI_QUEUE_NAME"])
    assert (doctor.redis.redis_url, doctor.redis.queue) == (want["REDIS_URL"], want["AI_QUEUE_NAME"])
    # the object store: backups (create, and a destination bucket on the app's store) and doctor
    cat = backup.catalog(make(tmp_path / "s3dest", environ=dict(dep.environ), backup={"destination": "s3",
                                                                                      "s3_bucket": "backups"}))
    for s3 in (dep.s3, doctor.s3):
        assert (s3.endpoint, s3.region) == (want["S3_ENDPOINT"], want["S3_REGION"])
    assert dep.bucket == doctor.bucket == want["S3_BUCKET"]
    if source in ("environ", "flag"):
        assert (cat.target.endpoint, cat.target.region) == (want["S3_ENDPOINT"], want["S3_REGION"])
    # the provider-key encryption key: keys check/rotate, backups (its fingerprint), doctor
    k = dep.api_key()
    assert (k.value if k else None) == want["API_KEY_ENCRYPTION_KEY"]
    configured = keys._setting_key(dep.api_key())
    assert (configured.raw if configured else None) == want["API_KEY_ENCRYPTION_KEY"]
    derived, _where = backup.api_key(dep)
    assert (derived is None) == (want["API_KEY_ENCRYPTION_KEY"] is None)
    if source == "environ":
        assert set(doctor.encryption_keys().values()) == {K_ENV}
    # env validate with the process environment laid over the files sees the same values
    if source != "flag":
        seen = validate_env(dep, ["api"], with_environ=True).envs.get("api", {})
        if source in ("environ", "api"):
            assert seen[DB] == want[DB] and seen["S3_REGION"] == want["S3_REGION"]


def test_no_database_anywhere_is_one_usage_error(tmp_path):
    dep = make(tmp_path)
    with pytest.raises(UsageError, match="no DATABASE_URL"):
        migrate.database_url(dep)
    with pytest.raises(UsageError, match="no DATABASE_URL"):
        backup.database(dep)
    assert Context(dep).database_url is None


def test_a_setting_absent_everywhere_comes_from_ops_toml(tmp_path):
    dep = make(tmp_path, s3={"region": "eu-west-3", "bucket": "b1"}, app={"queue": "jobs-x"})
    assert dep.s3.region == Context(dep).s3.region == "eu-west-3"
    assert dep.bucket == "b1" and target(dep).queue == "jobs-x" and target(dep).queue_source == "ops.toml"


def test_flags_and_env_file_secrets_are_scrubbed_before_anything_prints(tmp_path):
    from aixsss_ops.output import scrubber

    dep = build(tmp_path, {"flag": "f", "api": "a"})
    _ = dep.database, dep.redis, dep.s3
    text = scrubber.scrub(f"{db_url('f')} {redis_url('f')} sk-a-123456 {K_FLAG}")
    assert "pwfx1234567" not in text and "sk-a-123456" not in text and K_FLAG not in text


def test_backups_use_the_superuser_for_the_embedded_database_named_in_an_env_file(tmp_path):
    cfg = OpsConfig(state_dir=tmp_path / "x")
    app_url = embedded_url(cfg, cfg.postgres.user, EMBEDDED_APP_PW)
    dep = make(tmp_path, api={DB: app_url}, embedded=True)
    assert migrate.database_url(dep) == app_url  # the app's role for migrations
    assert urlsplit(dep.admin_database.value).username == cfg.postgres.superuser  # the superuser for backups
    given = make(tmp_path / "g", environ={DB: app_url}, embedded=True)
    assert given.admin_database.value == app_url  # a URL given in the environment is used as given
