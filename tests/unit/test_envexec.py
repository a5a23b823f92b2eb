"""envexec: env files, then URL host rewrites, then --set overrides; the docker runtime's app containers start
through it (their env file is a secret file, never container environment)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aixsss_ops.runtime.envexec import with_host


@pytest.mark.parametrize(
    ("url", "hostport", "expected"),
    [
        ("postgresql://app:s3cr%40t@127.0.0.1:15432/aixsss?schema=public", "postgres:5432",
         "postgresql://app:s3cr%40t@postgres:5432/aixsss?schema=public"),
        ("redis://127.0.0.1:16379", "redis:6379", "redis://redis:6379"),
        ("redis://:pw@127.0.0.1:16379/2", "redis:6379", "redis://:pw@redis:6379/2"),
        ("redis://localhost#frag", "redis:6379", "redis://redis:6379#frag"),
        ("not a url", "redis:6379", "not a url"),
    ],
)
def test_with_host_replaces_only_host_and_port(url, hostport, expected):
    assert with_host(url, hostport) == expected


def test_envexec_reads_the_file_rewrites_hosts_then_applies_overrides(tmp_path):
    env = tmp_path / "api.env"
    env.write_text("DATABASE_URL=postgresql://u:pw@127.0.0.1:1/db?schema=public\nREDIS_URL=redis://127.0.0.1:2\n"
                   "PORT=18001\nJWT_SECRET=x\n")
    env.chmod(0o400)
    names = ("DATABASE_URL", "REDIS_URL", "PORT", "JWT_SECRET")
    code = f"import json, os; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"
    r = subprocess.run(
        [sys.executable, "-m", "aixsss_ops.runtime.envexec", "--env-file", str(env), "--url-host",
         "DATABASE_URL=postgres:5432", "--url-host", "REDIS_URL=redis:6379", "--url-host", "UNSET_URL=x:1",
         "--set", "PORT=3001", "--", sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"DATABASE_URL": "postgresql://u:pw@postgres:5432/db?schema=public",
                                    "REDIS_URL": "redis://redis:6379", "PORT": "3001", "JWT_SECRET": "x"}


def test_an_unreadable_env_file_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "aixsss_ops.runtime.envexec", "--env-file", str(tmp_path / "nope.env"),
                        "--", "true"], capture_output=True, text=True, timeout=30)
    missing = tmp_path / "nope.env"
    assert r.returncode == 1 and r.stderr.strip() == f"envexec: cannot read {missing}: No such file or directory"
