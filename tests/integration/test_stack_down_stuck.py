"""`stack down` with a process that outlasts the wait (real supervisord): it is named, not reported stopped, the rest
of the stack still goes down, the engine stays up to hold it, and a rerun once it is gone finishes the job."""

from __future__ import annotations

import os
import signal

from tests.cli import run_cli
from tests.conftest import REPO, poll, stack_config, state_tmpdir

# the bundled app's processes, and one that ignores SIGTERM and may take 120 s to stop (a long job, say)
APP = f'''source = "{REPO / "app"}"

[app.processes.api]
command = ["{{python}}", "-m", "api"]
port_env = "PORT"
socket_env = "API_SOCKET"
env = {{ PYTHONPATH = "{{release}}", PYTHONUNBUFFERED = "1", HOST = "{{host}}" }}
ready = {{ http = "/api/health" }}

[app.processes.worker]
command = ["{{python}}", "-m", "worker"]
env = {{ PYTHONPATH = "{{release}}", PYTHONUNBUFFERED = "1" }}
ready = {{ log = "worker consuming queue" }}

[app.processes.stubborn]
command = ["sh", "-c", "trap '' TERM; echo stubborn up; while :; do sleep 1; done"]
ready = {{ log = "stubborn up" }}
stop_timeout = 120
'''


def test_a_process_still_stopping_when_the_wait_ends_is_named_and_keeps_the_engine_up():
    root = state_tmpdir("aixsss-stuck-")
    cfg = stack_config(root, app_toml=APP, supervisor={"stop_timeout": 1})  # the wait: 1 + 30 s
    try:
        r = run_cli("--json", "stack", "up", config=cfg, timeout=240)
        assert r.code == 0, r.output
        pid = next(s["pid"] for s in r.json["services"] if s["unit"] == "stubborn-blue")

        r = run_cli("--json", "stack", "down", config=cfg, timeout=240)
        assert r.code == 1, r.output
        assert r.json["ok"] is False
        assert r.json["error"].startswith("stubborn-blue did not stop within 31s"), r.json
        assert "stack down" in r.json["hint"]
        said = r.stderr
        assert "stopped worker-blue" in said and "stopped api-blue" in said and "stopped postgres" in said
        assert "stopped stubborn-blue" not in said and "stopped supervisord" not in said
        os.kill(pid, 0)  # still running, under the engine that was left up
        st = run_cli("--json", "stack", "status", config=cfg)
        units = {s["unit"]: s["state"] for s in st.json["services"]}
        assert units["stubborn-blue"] not in ("STOPPED", "EXITED") and units["postgres"] == "STOPPED", units

        os.kill(pid, signal.SIGKILL)  # what the operator does about it; the rerun then finishes

        def stubborn_gone() -> bool:
            st = run_cli("--json", "stack", "status", config=cfg).json
            return next(s["state"] for s in st["services"] if s["unit"] == "stubborn-blue") in ("STOPPED", "EXITED")

        poll(stubborn_gone, timeout=30, interval=0.5, what="stubborn-blue to end")
        r = run_cli("--json", "stack", "down", config=cfg, timeout=240)
        assert r.code == 0, r.output
        assert "stopped supervisord" in r.json["actions"], r.json
    finally:
        run_cli("stack", "down", config=cfg, timeout=240)
