"""What a killed supervisord or nginx master leaves, found and ended by procfs (real processes, no daemons)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aixsss_ops.proxy import launch
from aixsss_ops.runtime.supervisor import Program, Supervisor, proc_stat


def wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    st = proc_stat(pid)
    return st is None or st.state == "Z"


@pytest.fixture()
def sleeper(tmp_path) -> Path:
    """A copy of ``sleep`` under a name with spaces and parentheses (the command name /proc/PID/stat shows)."""
    exe = tmp_path / "bin" / "x) y (z"
    exe.parent.mkdir()
    shutil.copy(shutil.which("sleep"), exe)
    return exe


def test_proc_stat_reads_the_fields_after_a_command_name_with_parentheses(sleeper):
    p = subprocess.Popen([str(sleeper), "30"], start_new_session=True)
    try:
        st = proc_stat(p.pid)
        assert st is not None and st.ppid == os.getpid() and st.pgid == p.pid and st.session == p.pid
    finally:
        p.kill()
        p.wait()
    assert proc_stat(p.pid) is None


# a stand-in for supervisord: in a session of its own, each program a process group of its own (setpgrp), its pid
# file and its log line "spawned: 'NAME' with pid N", as supervisord writes them
FAKE_SUPERVISORD = textwrap.dedent("""
    import os, subprocess, sys, time
    root, sock, programs = sys.argv[1], sys.argv[2], sys.argv[3:]
    log = open(os.path.join(os.path.dirname(root), "logs", "supervisord.log"), "a")
    for spec in programs:
        name, cwd, env_marked, cmd = spec.split("|", 3)
        env = dict(os.environ, **({"SUPERVISOR_SERVER_URL": "unix://" + sock, "SUPERVISOR_PROCESS_NAME": name}
                                  if env_marked == "1" else {}))
        p = subprocess.Popen(["sh", "-c", cmd], cwd=cwd, env=env, preexec_fn=os.setpgrp)
        log.write(f"2026-01-01 00:00:00,000 INFO spawned: '{name}' with pid {p.pid}\\n")
    log.close()
    open(os.path.join(root, "supervisord.pid"), "w").write(str(os.getpid()))
    print("ready", flush=True)
    time.sleep(600)
""")


def test_a_killed_supervisord_leaves_orphans_that_are_found_and_stopped_as_it_would_stop_them(tmp_path, sleeper):
    state = tmp_path / "state"
    sup = Supervisor(state / "supervisor")
    for d in (sup.root, sup.include_dir, sup.log_dir, state / "redis", state / "app"):
        d.mkdir(parents=True, exist_ok=True)
    sup.write_program(Program("redis", ["x"], stopsignal="TERM", stopwaitsecs=5))
    sup.write_program(Program("stubborn", ["x"], stopsignal="TERM", stopwaitsecs=1))
    sup.sock.write_text("")  # what a killed supervisord leaves
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    programs = [
        f"redis|{state / 'redis'}|0|exec '{sleeper}' 600",  # known by its working directory
        f"api-blue|{outside}|1|'{sleeper}' 600 & exec '{sleeper}' 600",  # by its environment; a child in its group
        f"stubborn|{state / 'app'}|0|trap '' TERM; while :; do sleep 0.1; done",  # ignores its stop signal
        f"stranger|{outside}|0|exec '{sleeper}' 600",  # in the session, but nothing says it is this state's
    ]
    fake = subprocess.Popen([sys.executable, "-c", FAKE_SUPERVISORD, str(sup.root), str(sup.sock), *programs],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    bystander = subprocess.Popen([str(sleeper), "600"], cwd=state / "redis", start_new_session=True)
    try:
        assert fake.stdout.readline().strip() == "ready"
        assert sup.orphans() == [] and sup.killed() is None  # it runs: nothing is orphaned

        fake.kill()
        fake.wait()
        assert sup.killed() == fake.pid
        found = sup.orphans()
        by = {}
        for o in found:
            by.setdefault(o.program, []).append(o)
        assert set(by) == {"redis", "api-blue", "stubborn"}, found
        assert len(by["api-blue"]) == 2  # the program and its child: one group
        assert all(o.pid != bystander.pid for o in found)
        stranger = [p for p in _session(fake.pid) if p not in {o.pid for o in found}]
        assert stranger  # left alone

        stopped, left = sup.stop_orphans([["api-blue"], ["redis"]])
        assert left == [] and stopped == ["api-blue", "redis", "stubborn"], (stopped, left)
        assert all(gone(o.pid) for o in found)
        assert not gone(bystander.pid) and all(not gone(p) for p in stranger)
        assert not sup.sock.exists() and not sup.pidfile.exists()
        assert sup.killed() is None and sup.orphans() == []
    finally:
        for p in _session(fake.pid):
            os.kill(p, signal.SIGKILL)
        bystander.kill()
        bystander.wait()


def _session(sid: int) -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()
            and (st := proc_stat(int(e.name))) is not None and st.session == sid and st.state != "Z"]


def test_the_proxy_start_ends_the_workers_a_killed_master_left_and_nothing_else(tmp_path, sleeper, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # a "master" (its own group, in this folder) with two "workers" running the binary being started
    master = subprocess.Popen(["sh", "-c", f"'{sleeper}' 600 & '{sleeper}' 600 & wait"], start_new_session=True)
    wait(lambda: len(launch.leftovers(master.pid, str(sleeper), str(tmp_path))) == 2)
    workers = launch.leftovers(master.pid, str(sleeper), str(tmp_path))
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text(f"{master.pid}\n")
    stale = tmp_path / "proxy-blue.sock"
    stale.write_text("")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    same_binary_elsewhere = subprocess.Popen([str(sleeper), "600"], cwd=other_dir, start_new_session=True)
    try:
        os.kill(master.pid, signal.SIGKILL)
        master.wait()
        assert all(not gone(w) for w in workers)

        ended = launch.clear(pid_file, str(sleeper), [stale], grace=2.0)
        assert sorted(ended) == sorted(workers)
        assert all(gone(w) for w in workers)
        assert not stale.exists()
        assert not gone(same_binary_elsewhere.pid)
        assert launch.clear(pid_file, str(sleeper), []) == []  # nothing left: nothing to end
    finally:
        for w in workers:
            if not gone(w):
                os.kill(w, signal.SIGKILL)
        same_binary_elsewhere.kill()
        same_binary_elsewhere.wait()
