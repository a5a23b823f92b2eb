"""Small defects an attack found: the deploy lock's status for a person, the driver's whole message of an unreachable
Postgres, a secret process setting kept off a docker container's command line, the queue name of ops.toml followed
by the env files (and flagged while they differ)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.context.layout import Layout
from tests.cli import REPO, run_cli

# -- deploy lock status -------------------------------------------------------------------------------------------


@pytest.fixture
def lock_cfg(tmp_path) -> tuple[Path, Path]:
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return cfg, Layout(load_config(cfg).state).deploy_dir


def test_lock_status_is_readable_lines_when_held_and_one_json_document(lock_cfg):
    from aixsss_ops.deploy.lock import DeployLock

    cfg, directory = lock_cfg
    lock = DeployLock(directory)
    lock.acquire(1, {"action": "deploy", "version": "1.2.3-abcdef"})
    try:
        human = run_cli("deploy", "lock", "status", config=cfg)
        js = run_cli("--json", "deploy", "lock", "status", config=cfg)
    finally:
        lock.release()
    assert human.code == 0, human.output
    lines = human.stdout.strip().splitlines()
    assert lines[0] == "held"
    fields = dict(ln.split(": ", 1) for ln in lines[1:])
    assert set(fields) == {"holder", "pid", "host", "action", "since"}
    assert fields["pid"] == str(os.getpid()) and fields["action"] == "deploy 1.2.3-abcdef"
    assert "{" not in human.stdout and "'" not in human.stdout
    doc = json.loads(js.stdout)  # one document, nothing else on stdout
    assert doc["held"] is True and doc["holder"]["pid"] == os.getpid()


def test_lock_status_says_not_held(lock_cfg):
    cfg, directory = lock_cfg
    assert run_cli("deploy", "lock", "status", config=cfg).stdout.strip() == "not held"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "deploy.lock.json").write_text(json.dumps({"action": "deploy", "pid": 1}))  # a killed deploy's note
    r = run_cli("deploy", "lock", "status", config=cfg)
    assert r.stdout.startswith("not held") and "aixsss-ops deploy lock release" in r.stdout


# -- an unreachable Postgres: the driver's whole message ----------------------------------------------------------


def test_driver_message_keeps_every_line():
    from aixsss_ops.errors import driver_message

    text = ('connection failed: connection to server at "::1", port 1 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
            'connection to server at "127.0.0.1", port 1 failed: FATAL:  password authentication failed for user "u"')
    msg = driver_message(Exception(text))
    assert msg == ('connection failed: connection to server at "::1", port 1 failed: Connection refused (Is the server '
                   'running on that host and accepting TCP/IP connections?); connection to server at "127.0.0.1", '
                   'port 1 failed: FATAL: password authentication failed for user "u"')
    assert driver_message(Exception("")) == "Exception"


def test_an_unreachable_postgres_error_keeps_the_drivers_first_line():
    from aixsss_ops.dburl import parse_database_url
    from aixsss_ops.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable) as e:
        parse_database_url("postgresql://u:Secr3t-pw@127.0.0.1:1/db").connect(timeout=2)
    msg = e.value.message
    assert 'connection to server at "127.0.0.1", port 1 failed: Connection refused' in msg, msg
    assert "Is the server running" in msg and "Secr3t-pw" not in msg
    r = run_cli("migrate", "status", "--database-url", "postgresql://u:Secr3t-pw@127.0.0.1:1/db")
    assert r.code == 1 and "port 1 failed: Connection refused" in r.stderr, r.output
    assert "Secr3t-pw" not in r.output and "u:****@" in r.stderr


def test_the_postgres_probe_keeps_the_drivers_first_line():
    from aixsss_ops import probes

    ok, detail = probes.postgres("postgresql://u:pw@127.0.0.1:1/db", timeout=2)
    assert not ok and "port 1 failed: Connection refused" in detail, detail


# -- docker: a secret process setting in the container's environment, not its command line ------------------------

SECRET = "smtp-Pa55-" + os.urandom(6).hex()
URL_PW = "urlpw" + os.urandom(6).hex()


def test_a_docker_app_containers_secret_settings_are_environment_not_argv(tmp_path):
    from aixsss_ops.runtime import docker_specs as specs

    cfg_path = tmp_path / "ops.toml"
    cfg_path.write_text(f'''runtime = "docker"
state_dir = "{tmp_path / "state"}"

[app]
source = "{REPO / "app"}"

[app.processes.api]
command = ["{{python}}", "-m", "api"]
port_env = "PORT"
env = {{ PYTHONPATH = "{{release}}" }}
ready = {{ http = "/api/health" }}

[app.processes.worker]
command = ["{{python}}", "-m", "worker"]
env = {{ SMTP_PASSWORD = "{SECRET}", MAIL_URL = "smtp://m:{URL_PW}@mail:25", COLOR_SEEN = "{{color}}" }}
''')
    spec = specs.app_process(load_config(cfg_path), "worker", "blue", "r1", "1.0.0", "img")
    assert not any(SECRET in a or URL_PW in a for a in spec.command), spec.command
    assert spec.environment == {"SMTP_PASSWORD": SECRET, "MAIL_URL": f"smtp://m:{URL_PW}@mail:25"}
    flags = [spec.command[i + 1] for i, a in enumerate(spec.command) if a == "--from-env"]
    assert sorted(flags) == ["MAIL_URL", "SMTP_PASSWORD"]
    assert "COLOR_SEEN=blue" in spec.command  # a plain value stays an envexec --set


def test_envexec_from_env_wins_over_the_env_file(tmp_path):
    env = tmp_path / "worker.env"
    env.write_text("SMTP_PASSWORD=from-the-file\nOTHER=file\n")
    code = "import json, os; print(json.dumps([os.environ.get('SMTP_PASSWORD'), os.environ.get('OTHER')]))"
    r = subprocess.run([sys.executable, "-m", "aixsss_ops.runtime.envexec", "--env-file", str(env),
                        "--from-env", "SMTP_PASSWORD", "--from-env", "UNSET_HERE", "--", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "SMTP_PASSWORD": SECRET})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [SECRET, "file"]


# -- app.queue of ops.toml and the env files ------------------------------------------------------------------------


def _queue_stack(tmp_path, queue: str) -> tuple:
    cfg_path = tmp_path / "ops.toml"
    cfg_path.write_text(f'state_dir = "{tmp_path / "state"}"\n\n[app]\nqueue = "{queue}"\n')
    cfg = load_config(cfg_path)
    layout = Layout(cfg.state)
    layout.env_dir.mkdir(parents=True)
    for svc in ("api", "worker"):
        envfile.write(layout.env_file(svc), {"AI_QUEUE_NAME": "ai-jobs", "JWT_SECRET": "kept-" + svc}, "test")
    return cfg_path, cfg, layout


def test_follow_queue_writes_ops_tomls_queue_and_restore_puts_the_files_back(tmp_path):
    from aixsss_ops.context.envgen import follow_queue

    _path, cfg, layout = _queue_stack(tmp_path, "jobs-v2")
    before = {svc: layout.env_file(svc).read_text() for svc in ("api", "worker")}
    planned = follow_queue(cfg, layout, dry_run=True)
    assert {svc: layout.env_file(svc).read_text() for svc in ("api", "worker")} == before
    done = follow_queue(cfg, layout)
    assert planned.lines == done.lines
    for svc in ("api", "worker"):
        env = envfile.read(layout.env_file(svc))
        assert env == {"AI_QUEUE_NAME": "jobs-v2", "JWT_SECRET": "kept-" + svc}
        assert layout.env_file(svc).stat().st_mode & 0o777 == 0o600
    assert len(done.lines) == 1 and "'ai-jobs' -> 'jobs-v2'" in done.lines[0] and "api.env and worker.env" in done.lines[0]
    assert follow_queue(cfg, layout).lines == []  # in line now: nothing to do
    done.restore()
    assert {svc: layout.env_file(svc).read_text() for svc in ("api", "worker")} == before


def test_env_validate_warns_when_the_env_files_queue_is_not_ops_tomls(tmp_path):
    from aixsss_ops.envcheck.rules import validate

    found = validate({"api": {"AI_QUEUE_NAME": "ai-jobs"}, "worker": {}}, queue="jobs-v2")
    queue = [f for f in found if f.check == "env.queue"]
    assert {f.service for f in queue} == {"api", "worker"} and all(f.status == "warn" for f in queue)
    assert all("'ai-jobs'" in f.message and "'jobs-v2'" in f.message for f in queue)
    assert not [f for f in validate({"api": {"AI_QUEUE_NAME": "jobs-v2"}}, queue="jobs-v2") if f.check == "env.queue"]
