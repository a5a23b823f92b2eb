"""The local runtime after its own daemons were SIGKILLed (real supervisord, nginx, Postgres, Redis, SeaweedFS):
a killed nginx master is replaced (its orphaned workers ended), and what a killed supervisord left running is
reported, stopped by `stack down` (Postgres cleanly) or by `stack up`, which then brings the stack back with its data."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from aixsss_ops import sysbin
from aixsss_ops.config import load_config
from aixsss_ops.dburl import parse_database_url
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import bundled_app_toml, poll, stack_config, state_tmpdir

# the bundled app with an api on TCP only: nginx listens on a unix socket per color and forwards to its port
TCP_ONLY_APP = bundled_app_toml(socket=False)
DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 20.0, "lock_timeout": 60.0, "backup": False}


@pytest.fixture()
def stack(request):
    root = state_tmpdir("aixsss-crash-")
    cfg = stack_config(root, getattr(request, "param", ""), deploy=DEPLOY)
    r = run_cli("--json", "stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    st = open_stack(load_config(cfg))
    yield {"cfg": cfg, "state": st.layout.root, "stack": st, "url": st.url}
    run_cli("stack", "down", config=cfg, timeout=180)


@dataclass(frozen=True)
class Stat:
    state: str
    pgid: int
    session: int


def proc_stat(pid: int) -> Stat | None:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return Stat(f[0], int(f[2]), int(f[3]))


def alive(pid: int) -> bool:
    st = proc_stat(pid)
    return st is not None and st.state != "Z"


def _live(match) -> set[int]:
    """The live (not zombie) processes whose ``/proc/PID/stat`` fields ``match``."""
    out = set()
    for e in os.scandir("/proc"):
        if e.name.isdigit() and (st := proc_stat(int(e.name))) is not None and match(st) and st.state != "Z":
            out.add(int(e.name))
    return out


def members(sid: int) -> set[int]:
    """The live processes of session ``sid`` (supervisord runs its programs in its own)."""
    return _live(lambda st: st.session == sid)


def group(pgid: int) -> set[int]:
    return _live(lambda st: st.pgid == pgid)


def postmasters(datadir: Path) -> list[int]:
    """The postmasters serving ``datadir`` (their command line names it; a backend's names its role)."""
    out = []
    for e in os.scandir("/proc"):
        if not e.name.isdigit():
            continue
        try:
            argv = Path(f"/proc/{e.name}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"-D" in argv and str(datadir).encode() in argv:
            out.append(int(e.name))
    return out


def status(cfg: Path) -> tuple[int, dict]:
    r = run_cli("--json", "stack", "status", config=cfg)
    return r.code, r.json


def health(url: str) -> dict:
    return httpx.get(url + "/api/health", timeout=5).json()


def admin(st) -> psycopg.Connection:
    return psycopg.connect(parse_database_url(st.admin_url()).conninfo, autocommit=True)


def kill_supervisord(state: Path) -> int:
    pid = int((state / "supervisor" / "supervisord.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    poll(lambda: not alive(pid), timeout=10, what="supervisord to die")
    return pid


def cluster_state(st) -> str:
    """``pg_controldata``'s "Database cluster state" of the stack's data folder."""
    binary = Path(sysbin.find("postgres")).with_name("pg_controldata")
    r = subprocess.run([str(binary), str(st.layout.pg_data)], capture_output=True, text=True, check=True,
                       env={**os.environ, "LC_ALL": "C"})
    return next(line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                if line.startswith("Database cluster state"))


@pytest.mark.parametrize("stack", ["", TCP_ONLY_APP], indirect=True, ids=["api-socket", "api-tcp-only"])
def test_a_killed_nginx_master_is_replaced_and_its_orphaned_workers_ended(stack):
    cfg, state, url = stack["cfg"], stack["state"], stack["url"]
    tcp_only = not stack["stack"].cfg.app.processes["api"].socket_env
    r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=180)
    assert r.code == 0, r.output
    assert health(url)["color"] == "green"
    pid_file = state / "nginx" / "nginx.pid"
    master = int(pid_file.read_text())
    workers = group(master) - {master}
    assert workers

    os.kill(master, signal.SIGKILL)

    def replaced() -> int | None:  # a new master that supervisord runs as the proxy, the killed one's workers gone
        if any(alive(w) for w in workers):
            return None
        try:
            new = int(pid_file.read_text())
        except (OSError, ValueError):
            return None
        code, st = status(cfg)
        proxy = next(s for s in st["services"] if s["unit"] == "proxy")
        return new if new != master and alive(new) and proxy["state"] == "RUNNING" and proxy["pid"] == new else None

    new = poll(replaced, timeout=30, interval=0.5, what="the killed nginx master to be replaced")
    time.sleep(4)  # longer than nginx's 5 bind attempts (2.5 s): a master that could not bind has exited by now
    assert alive(new) and int(pid_file.read_text()) == new
    assert not any(alive(w) for w in workers)
    assert "ended 2 process(es) a killed nginx master left running" in run_cli(
        "stack", "logs", "proxy", config=cfg).stdout
    code, st = status(cfg)
    assert code == 0 and st["healthy"], st
    doc = run_cli("--json", "doctor", "--only", "deploy", config=cfg, timeout=120)
    findings = {f["check"]: f for f in doc.json["findings"]}
    assert findings["deploy.active"]["status"] == "ok", findings

    sw = run_cli("--json", "deploy", "switch", "blue", config=cfg, timeout=180)
    assert sw.code == 0, sw.output
    h = health(url)
    assert (h["color"], h["version"]) == ("blue", "1.0.0"), h
    assert alive(new) and int(pid_file.read_text()) == new  # served by the new master, which still runs
    if tcp_only:  # the new master listens on the colors' sockets again (the killed one's files were removed)
        assert (state / "run" / "proxy-blue.sock").is_socket() and (state / "run" / "proxy-green.sock").is_socket()


def test_a_killed_supervisord_is_reported_then_down_stops_what_it_left_and_up_brings_the_stack_back(stack):
    cfg, state, st = stack["cfg"], stack["state"], stack["stack"]
    with admin(st) as c:
        c.execute("CREATE TABLE crash_probe (v text)")
        c.execute("INSERT INTO crash_probe VALUES ('kept')")
    sid = int((state / "supervisor" / "supervisord.pid").read_text())
    started = members(sid) - {sid}
    postmaster = postmasters(st.layout.pg_data)
    assert len(postmaster) == 1 and postmaster[0] in started
    # a process of this state directory that supervisord did not start: not the tool's to stop
    bystander = subprocess.Popen(["sleep", "600"], cwd=state / "redis", start_new_session=True)
    try:
        kill_supervisord(state)
        assert all(alive(p) for p in postmaster)

        code, report = status(cfg)
        assert code == 3, report
        units = {s["unit"]: s for s in report["services"]}
        for unit in ("postgres", "redis", "proxy", "api-blue", "worker-blue"):
            assert units[unit]["state"] == "ORPHANED" and units[unit]["healthy"] is False, units[unit]
            assert units[unit]["detail"].startswith("left running by its killed supervisord"), units[unit]
        assert units["postgres"]["pid"] == postmaster[0]
        assert any(f"killed: its pid file names pid {sid}" in w for w in report["warnings"]), report["warnings"]
        doc = run_cli("--json", "doctor", "--only", "deploy", config=cfg, timeout=120).json
        assert any(f["status"] == "fail" and "running orphaned" in f["message"] for f in doc["findings"]), doc

        down = run_cli("--json", "stack", "down", config=cfg, timeout=240)
        assert down.code == 0, down.output
        for unit in ("postgres", "redis", "proxy", "api-blue", "worker-blue"):
            assert f"stopped orphaned {unit} (its supervisord was killed)" in down.json["actions"], down.json
        assert not any(alive(p) for p in started), [p for p in started if alive(p)]
        assert alive(bystander.pid)
        assert cluster_state(st) == "shut down"  # a fast shutdown (SIGINT), not a crash
        assert not (state / "supervisor" / "supervisor.sock").exists()
        assert not (state / "supervisor" / "supervisord.pid").exists()
        code, report = status(cfg)
        assert code == 3 and all(s["state"] == "STOPPED" for s in report["services"]), report
        assert run_cli("--json", "stack", "down", config=cfg).json["actions"] == ["stack was not running"]

        up = run_cli("--json", "stack", "up", config=cfg, timeout=240)
        assert up.code == 0, up.output
        assert "started supervisord" in up.json["actions"] and "initdb" not in up.json["actions"], up.json
        assert up.json["healthy"]
        assert len(postmasters(st.layout.pg_data)) == 1
        with admin(st) as c:
            assert c.execute("SELECT v FROM crash_probe").fetchall() == [("kept",)]
        code, report = status(cfg)
        assert code == 0 and report["healthy"], report
        assert health(stack["url"])["color"] == "blue"
    finally:
        bystander.kill()
        bystander.wait()


def test_up_right_after_supervisord_was_killed_stops_what_it_left_and_starts_the_stack_again(stack):
    cfg, state, st = stack["cfg"], stack["state"], stack["stack"]
    with admin(st) as c:
        c.execute("CREATE TABLE crash_probe (v text)")
        c.execute("INSERT INTO crash_probe VALUES ('kept')")
    sid = int((state / "supervisor" / "supervisord.pid").read_text())
    started = members(sid) - {sid}
    kill_supervisord(state)

    up = run_cli("--json", "stack", "up", config=cfg, timeout=240)
    assert up.code == 0, up.output
    actions = up.json["actions"]
    assert "stopped orphaned postgres (its supervisord was killed)" in actions, actions
    assert actions.index("stopped orphaned postgres (its supervisord was killed)") < actions.index("started postgres")
    assert "started supervisord" in actions and up.json["healthy"], up.json
    assert not any(alive(p) for p in started), [p for p in started if alive(p)]
    assert len(postmasters(st.layout.pg_data)) == 1
    with admin(st) as c:
        assert c.execute("SELECT v FROM crash_probe").fetchall() == [("kept",)]
    code, report = status(cfg)
    assert code == 0 and report["healthy"], report
