"""On the docker runtime, a secret-looking value of a process's ``env`` in ops.toml (by its name, as ``config show``
masks it, or a URL with a password) reaches the process through the container's environment: never its command
line (Config.Cmd, Args, the host's /proc/PID/cmdline), and it wins over the service's env file as on the local
runtime."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from aixsss_ops.config import load_config
from aixsss_ops.context.layout import Layout
from aixsss_ops.runtime import docker_specs as specs
from aixsss_ops.runtime.docker import DockerRuntime
from tests.cli import REPO
from tests.conftest import stack_config, state_tmpdir
from tests.integration.docker.conftest import purge

SMTP = "smtp-Pa55-" + os.urandom(6).hex()
URL_PW = "urlpw" + os.urandom(6).hex()
PRINT = ("import os, time; print('SEEN', os.environ.get('SMTP_PASSWORD'), os.environ.get('MAIL_URL'), "
         "os.environ.get('COLOR_SEEN'), os.environ.get('FROM_FILE'), flush=True); time.sleep(600)")


def app_toml() -> str:
    return f'''source = "{REPO / "app"}"

[app.processes.api]
command = ["{{python}}", "-m", "api"]
port_env = "PORT"
socket_env = "API_SOCKET"
env = {{ PYTHONPATH = "{{release}}", PYTHONUNBUFFERED = "1", HOST = "{{host}}" }}
ready = {{ http = "/api/health" }}

[app.processes.worker]
command = ["{{python}}", "-c", "{PRINT}"]
ready = {{ log = "SEEN" }}

[app.processes.worker.env]
SMTP_PASSWORD = "{SMTP}"
COLOR_SEEN = "{{color}}"
MAIL_URL = "smtp://m:{URL_PW}@127.0.0.1:25"
'''


@pytest.fixture
def project(docker_images):
    import uuid

    root = state_tmpdir("aixsss-secretenv-")
    name = f"t{uuid.uuid4().hex[:8]}"
    cfg_path = stack_config(root, app_toml=app_toml())
    cfg_path.write_text(f'project = "{name}"\nruntime = "docker"\n' + cfg_path.read_text())
    try:
        yield load_config(cfg_path), name
    finally:
        purge(name)


def test_a_secret_process_setting_is_in_the_containers_environment_not_its_command_line(project):
    cfg, name = project
    layout = Layout(cfg.state)
    env_file = layout.env_file("worker")
    env_file.parent.mkdir(parents=True, exist_ok=True)
    env_file.write_text("SMTP_PASSWORD=the-env-files-value\nFROM_FILE=yes\n")
    env_file.chmod(0o600)
    rt = DockerRuntime(cfg, layout)
    rt.client.networks.create(specs.network_name(cfg), labels={"io.aixsss.project": name})
    spec = specs.app_process(cfg, "worker", "blue", "r1", "1.0.0", cfg.docker.runtime_image)
    c = rt.create(spec)
    c.start()
    deadline = time.monotonic() + 60
    logs = ""
    while "SEEN" not in logs and time.monotonic() < deadline:
        time.sleep(0.3)
        logs = c.logs().decode(errors="replace")
    # the process sees the values of ops.toml (over the env file's), placeholders filled as before
    assert f"SEEN {SMTP} smtp://m:{URL_PW}@127.0.0.1:25 blue yes" in logs, logs
    info = rt.client.api.inspect_container(c.id)
    argv = [info["Path"], *info["Args"], *(info["Config"]["Cmd"] or [])]
    assert "envexec" in " ".join(argv)
    for secret in (SMTP, URL_PW):
        assert not any(secret in a for a in argv), argv
    pid = info["State"]["Pid"]
    cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in [pid, *_children(pid)]]
    assert cmdlines and not any(s.encode() in cl for cl in cmdlines for s in (SMTP, URL_PW)), cmdlines
    assert {"SMTP_PASSWORD", "MAIL_URL"} <= {e.partition("=")[0] for e in info["Config"]["Env"]}


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        for k in kids:
            out += [int(k), *_children(int(k))]
    return out
