"""Managed infra: ``stack up`` asks the external services, with the credentials given, before it writes anything.

A wrong password (PostgreSQL, a Redis with ``requirepass``, the object store's secret key) is one error line naming
the service and the problem, never the password; the env files stay as they were (none on a first run), so the
commands after it keep the settings that worked. The services are real: the session's PostgreSQL and SeaweedFS and
a redis-server of this module started with ``--requirepass``.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid

import pytest

from aixsss_ops import envfile
from tests.cli import run_cli
from tests.conftest import free_port, stack_config, state_tmpdir, wait_port
from tests.integration.test_external_infra import APP_ROLE, managed_database, processes_under

pytestmark = pytest.mark.slow
ENV_FILES = ("api.env", "worker.env", "web.env")


@pytest.fixture(scope="module")
def locked_redis():
    """A redis-server that asks for a password (``requirepass``), as a managed Redis does: (url, password)."""
    from aixsss_ops import sysbin

    root = state_tmpdir("aixsss-redis-auth-")
    port = free_port()
    password = f"redispw-{secrets.token_hex(10)}"
    proc = subprocess.Popen([sysbin.find("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(root), "--requirepass", password, "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield {"host": "127.0.0.1", "port": port, "password": password}
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def managed(pg_server, locked_redis, s3_server):
    root = state_tmpdir("aixsss-external-checks-")
    db, password = managed_database(pg_server)
    role = f"{APP_ROLE}_{db}"
    cfg = stack_config(root, postgres={"external": True, "database": db, "user": role}, redis={"external": True},
                       s3={"external": True, "bucket": f"ext-{uuid.uuid4().hex[:10]}"},
                       supervisor={"start_timeout": 20})
    r = locked_redis
    good = {"DATABASE_URL": f"postgresql://{role}:{password}@{pg_server.host}:{pg_server.port}/{db}?schema=public",
            "REDIS_URL": f"redis://:{r['password']}@{r['host']}:{r['port']}", "S3_ENDPOINT": s3_server.endpoint,
            "S3_ACCESS_KEY": s3_server.access_key, "S3_SECRET_KEY": s3_server.secret_key}
    wrong = {
        "postgres": ("DATABASE_URL", good["DATABASE_URL"].replace(f":{password}@", ":{pw}@"), "the external postgres"),
        "redis": ("REDIS_URL", f"redis://:{{pw}}@{r['host']}:{r['port']}", "the external redis"),
        "s3": ("S3_SECRET_KEY", "{pw}", "the external s3"),
    }
    yield {"cfg": cfg, "env_dir": root / "state" / "env", "good": good, "wrong": wrong,
           "secrets": [password, r["password"], s3_server.secret_key], "root": root}
    run_cli("stack", "down", config=cfg, timeout=180)


def _env_bytes(env_dir) -> dict[str, bytes | None]:
    return {n: (env_dir / n).read_bytes() if (env_dir / n).exists() else None for n in ENV_FILES}


def _up_with_wrong(m, service: str, json: bool) -> tuple[object, str]:
    """``stack up`` with a wrong password for ``service`` (the others right): (result, the wrong password)."""
    name, template, _ = m["wrong"][service]
    bad = f"wrongpw-{secrets.token_hex(8)}"
    env = {**m["good"], name: template.format(pw=bad)}
    r = run_cli("stack", "up", *(["--json"] if json else []), config=m["cfg"], env=env, timeout=180)
    return r, bad


def _assert_refused(m, service: str, r, bad: str) -> None:
    assert r.code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, r.output
    assert errors[0].startswith(f"error: {m['wrong'][service][2]} refuses the credentials given"), r.output
    assert "hint:" in r.stderr, r.output
    assert "start it" not in r.output and "stack up`" not in r.output, r.output  # nothing here starts it
    for text in (r.stdout, r.stderr):
        for secret in (bad, *m["secrets"]):
            assert secret not in text, (secret, text)


@pytest.mark.parametrize("service", ["postgres", "redis", "s3"])
@pytest.mark.parametrize("json", [False, True], ids=["human", "json"])
def test_a_first_up_with_a_wrong_password_writes_no_env_file_and_starts_nothing(managed, service, json):
    r, bad = _up_with_wrong(managed, service, json)
    _assert_refused(managed, service, r, bad)
    assert _env_bytes(managed["env_dir"]) == dict.fromkeys(ENV_FILES), "an env file was written"
    assert not processes_under(managed["root"])


def test_a_right_up_writes_the_env_files_and_a_wrong_password_later_leaves_them_byte_for_byte(managed):
    r = run_cli("stack", "up", "--json", config=managed["cfg"], env=managed["good"], timeout=300)
    assert r.code == 0, r.output
    api = envfile.read(managed["env_dir"] / "api.env")
    assert api["DATABASE_URL"] == managed["good"]["DATABASE_URL"]
    assert api["REDIS_URL"] == managed["good"]["REDIS_URL"]
    before = _env_bytes(managed["env_dir"])
    assert all(before.values()), before
    for service in ("postgres", "redis", "s3"):
        for json in (False, True):
            r, bad = _up_with_wrong(managed, service, json)
            _assert_refused(managed, service, r, bad)
            assert _env_bytes(managed["env_dir"]) == before, f"{service}: the env files changed"
    # the stack kept running on the settings that work, and a later command reads them
    r = run_cli("stack", "status", "--json", config=managed["cfg"], timeout=120)
    assert r.code == 0 and r.json["healthy"], r.output
