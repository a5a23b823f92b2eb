"""A secret-looking value of a process's ``env`` in ops.toml (by its name, as ``config show`` masks it, or a URL
with a password) reaches the process through a 0600 env file envexec reads: never supervisord's configuration, never
a command line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.cli import REPO, run_cli
from tests.conftest import stack_config, state_tmpdir

SMTP = "smtp-Pa55-" + os.urandom(6).hex()
TOKEN = "tok-" + os.urandom(8).hex()
URL_PW = "urlpw" + os.urandom(6).hex()


def app_toml() -> str:
    return f'''source = "{REPO / "app"}"

[app.processes.api]
command = ["{{python}}", "-m", "api"]
port_env = "PORT"
socket_env = "API_SOCKET"
env = {{ PYTHONPATH = "{{release}}", PYTHONUNBUFFERED = "1", HOST = "{{host}}", API_TOKEN = "{TOKEN}" }}
ready = {{ http = "/api/health" }}

[app.processes.worker]
command = ["{{python}}", "-m", "worker"]
ready = {{ log = "worker consuming queue" }}

[app.processes.worker.env]
PYTHONPATH = "{{release}}"
PYTHONUNBUFFERED = "1"
SMTP_PASSWORD = "{SMTP}"
COLOR_SEEN = "{{color}}"
MAIL_URL = "smtp://m:{URL_PW}@127.0.0.1:25"
'''


@pytest.fixture(scope="module")
def stack():
    root = state_tmpdir("aixsss-appsecrets-")
    cfg = stack_config(root, app_toml=app_toml(), deploy={"backup": False})
    r = run_cli("stack", "up", config=cfg, timeout=300)
    try:
        assert r.code == 0, r.output
        yield {"cfg": cfg, "root": root}
    finally:
        run_cli("stack", "down", config=cfg, timeout=180)


def _pids(cfg: Path) -> dict[str, int]:
    r = run_cli("--json", "stack", "status", config=cfg, timeout=60)
    return {s["unit"]: s["pid"] for s in json.loads(r.stdout)["services"] if s.get("pid")}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(v.decode(errors="replace").partition("=")[::2] for v in raw if v)


def test_the_processes_get_their_secret_values(stack):
    pids = _pids(stack["cfg"])
    worker, api = _environ(pids["worker-blue"]), _environ(pids["api-blue"])
    assert worker["SMTP_PASSWORD"] == SMTP
    assert worker["MAIL_URL"] == f"smtp://m:{URL_PW}@127.0.0.1:25"
    assert worker["COLOR_SEEN"] == "blue"  # a plain value, placeholders filled as before
    assert api["API_TOKEN"] == TOKEN


def test_no_secret_value_is_in_supervisords_config_or_any_command_line(stack):
    sup = stack["root"] / "state" / "supervisor"
    confs = [sup / "supervisord.conf", *sorted((sup / "programs").glob("*.conf"))]
    assert any(p.name == "worker-blue.conf" for p in confs)
    for conf in confs:
        text = conf.read_text()
        for value in (SMTP, TOKEN, URL_PW):
            assert value not in text, f"{value} in {conf}"
    pids = _pids(stack["cfg"])
    assert {"worker-blue", "api-blue"} <= set(pids)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        for value in (SMTP, TOKEN, URL_PW):
            assert value not in cmdline, f"{value} in /proc/{entry.name}/cmdline: {cmdline!r}"


def test_the_secret_env_files_are_the_owners_alone(stack):
    files = sorted((stack["root"] / "state" / "supervisor" / "env").glob("*.env"))
    assert {f.name for f in files} >= {"worker-blue.env", "api-blue.env"}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert SMTP in (stack["root"] / "state" / "supervisor" / "env" / "worker-blue.env").read_text()


# -- `queue failed`: a failedReason that echoes a secret (a provider's error) is masked ------------------------

S3_KEY = "s3sekret" + os.urandom(8).hex()
API_KEY = "sk-proj-" + os.urandom(16).hex()


def _fail_jobs(url: str, queue: str, reason: str, n: int = 2) -> None:
    import asyncio

    from bullmq import Queue, Worker

    from tests.integration.queue_helpers import apoll, sync_redis

    async def go():
        qq = Queue(queue, {"connection": url})
        for i in range(n):
            await qq.add("llm_chat", {"i": i})

        async def boom(job, token):
            raise RuntimeError(reason)

        w = Worker(queue, boom, {"connection": url, "drainDelay": 1})
        r = sync_redis(url)

        async def done():
            return r.zcard(f"bull:{queue}:failed") == n

        await apoll(done, what="failed jobs")
        await w.close()
        await qq.close()

    asyncio.run(go())


@pytest.fixture
def failed_queue(redis_server, queue_name, tmp_path):
    cfg = tmp_path / "ops.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n\n[s3]\nsecret_key = "{S3_KEY}"\n')
    # the known secret straddles the 80th (table) and 200th (stored reason) characters: a cut-off piece of it must
    # not show either
    reason = f"Incorrect API key provided: {API_KEY}.".ljust(75) + f" {S3_KEY} " + "q" * 95 + f" {S3_KEY} end"
    _fail_jobs(redis_server.url, queue_name, reason)
    return {"cfg": cfg, "url": redis_server.url, "queue": queue_name}


def _queue(f, *args):
    return run_cli(*args, "--redis-url", f["url"], "--queue", f["queue"], config=f["cfg"], timeout=60)


def test_queue_failed_masks_known_secrets_and_api_keys(failed_queue):
    for args in (("queue", "failed", "--json"), ("queue", "failed")):
        r = _queue(failed_queue, *args)
        assert r.code == 0, r.output
        for piece in (S3_KEY[:8], S3_KEY[-8:], API_KEY[8:16], API_KEY[-8:]):
            assert piece not in r.output, (args, piece, r.output)
    r = _queue(failed_queue, "--json", "queue", "failed")
    reasons = [j["failed_reason"] for j in json.loads(r.stdout)["jobs"]]
    assert len(reasons) == 2
    assert all(x.startswith("Incorrect API key provided: sk-****.") and len(x) <= 200 for x in reasons), reasons


@pytest.mark.parametrize("args", [
    ("queue", "failed", "--limit", "99999999999999999999"),
    ("queue", "retry-failed", "--dry-run", "--limit", "99999999999999999999"),
    ("queue", "clean", "--state", "failed", "--dry-run", "--limit", "9223372036854775808", "--older-than", "1s"),
    ("queue", "clean", "--state", "failed", "--dry-run", "--older-than", "9" * 400),
    ("queue", "clean", "--state", "failed", "--dry-run", "--older-than", "99999999999999999999d"),
    ("queue", "drain-wait", "--timeout", "1e30"),
    ("queue", "stats", "--watch", "1e30"),
])
def test_queue_numbers_outside_the_range_are_usage_errors(failed_queue, args):
    r = _queue(failed_queue, *args)
    assert r.code == 2, r.output
    assert "internal error" not in r.output


# -- a state directory with a space: every path of the proxy's and supervisord's configuration still one value -------

def test_a_state_dir_with_a_space_runs_the_stack_through_a_real_nginx():
    import tempfile

    import httpx

    from aixsss_ops.config import load_config
    from aixsss_ops.stack.engines import open_stack

    root = Path(tempfile.mkdtemp(prefix="aixsss space ", dir=state_tmpdir("aixsss-space-")))
    os.chmod(root, 0o755)
    cfg = stack_config(root, deploy={"backup": False})
    try:
        r = run_cli("stack", "up", config=cfg, timeout=300)
        assert r.code == 0, r.output
        conf = (root / "state" / "nginx" / "nginx.conf").read_text()
        assert f'root "{root}/state/nginx/live/web";' in conf
        url = open_stack(load_config(cfg)).url
        assert httpx.get(url + "/api/health", timeout=10).json()["ok"] is True
        page = httpx.get(url + "/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        run_cli("stack", "down", config=cfg, timeout=180)
