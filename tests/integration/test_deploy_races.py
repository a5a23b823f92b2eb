"""Deploys, rollbacks and switches that meet each other or a long job, on the local runtime with the bundled app
(a copy whose worker sleeps ``input.ms`` in a job, whose worker stop timeout is short)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.deploy.lock import DeployLock
from aixsss_ops.stack.engines import open_stack
from tests.cli import EXE, REPO, run_cli
from tests.conftest import bundled_app_toml, stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 20.0, "lock_timeout": 120.0,
          "backup": False}
WORKER_STOP = 6  # the worker's stop timeout: a job longer than that is killed by a drain
SLEEPY = '''        await asyncio.sleep(float(job.data.get("input", {}).get("ms", 0)) / 1000)
'''


def app_copy(root: Path) -> Path:
    src = root / "app"
    shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    proc = src / "worker" / "processor.py"
    text = proc.read_text()
    anchor = "               WHERE \"id\" = %s''', (utcnow(), job.id),\n        )\n"  # the job is marked running
    assert anchor in text
    proc.write_text(text.replace(anchor, anchor + SLEEPY))
    return src


def app_toml(src: Path) -> str:
    return bundled_app_toml(source=src, api_lines=("stop_timeout = 30",), worker_lines=(f"stop_timeout = {WORKER_STOP}",))


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-races-")
    src = app_copy(root)
    cfg = stack_config(root, app_toml(src), deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    url = open_stack(load_config(cfg)).url
    with httpx.Client(base_url=url, timeout=10) as c:
        profile = c.post("/api/ai-profiles", json={"name": "races", "provider": "openai_compatible",
                                                   "apiKey": "sk-races"}).json()["id"]
    yield {"cfg": cfg, "root": root, "src": src, "url": url, "profile": profile}
    run_cli("stack", "down", config=cfg, timeout=240)


def health(url: str) -> dict:
    return httpx.get(url + "/api/health", timeout=5).json()


def status(cfg: Path) -> dict:
    r = run_cli("--json", "deploy", "status", config=cfg)
    assert r.code == 0, r.output
    return r.json


def unit(cfg: Path, name: str) -> str:
    return open_stack(load_config(cfg)).unit_state(name)


def wait_for(check, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


def running_job(env, ms: int) -> str:
    """A job taken by the live worker and running (it sleeps ``ms``)."""
    with httpx.Client(base_url=env["url"], timeout=10) as c:
        r = c.post("/api/ai-jobs", json={"type": "llm_chat", "profileId": env["profile"], "input": {"ms": ms}})
        assert r.status_code in (200, 201), r.text
        job = r.json()["id"]
        assert wait_for(lambda: c.get(f"/api/ai-jobs/{job}").json()["status"] == "running", 30)
    return job


def no_worker_stopping(cfg: Path) -> None:
    """The drains of earlier tests ended (each bounded by the worker's stop timeout)."""
    assert wait_for(lambda: all(unit(cfg, f"worker-{c}") != "STOPPING" for c in ("blue", "green")),
                    WORKER_STOP + 30)


class Lines(threading.Thread):
    """Collects a subprocess's stderr lines as they come."""

    def __init__(self, p: subprocess.Popen):
        super().__init__(daemon=True)
        self.p, self.lines = p, []

    def run(self):
        for line in self.p.stderr:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def popen(cfg: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Lines]:
    p = subprocess.Popen([EXE, "--config", str(cfg), *args], cwd=REPO, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1", **(env or {})})
    t = Lines(p)
    t.start()
    return p, t


def test_rollback_to_the_live_release_is_a_noop(env):
    cfg = env["cfg"]
    assert run_cli("deploy", "--version", "2.0.0", config=cfg, timeout=180).code == 0
    before = status(cfg)
    live = before["active"]
    release = before["colors"][live]["release"]
    r = run_cli("rollback", "--to", release, config=cfg, timeout=120)
    assert r.code == 0, r.output
    assert "already live: nothing to do" in r.stdout
    after = status(cfg)
    assert after["active"] == live
    for color in ("blue", "green"):
        assert (after["colors"][color]["release"], after["colors"][color]["status"]) == (
            before["colors"][color]["release"], before["colors"][color]["status"])
    assert run_cli("--json", "deploy", "releases", config=cfg).json[-1]["action"] == "deploy"


def test_a_second_rollback_during_the_drain_of_the_first_starts_the_live_workers(env):
    cfg = env["cfg"]
    no_worker_stopping(cfg)
    live = status(cfg)["active"]
    running_job(env, 20_000)  # on worker-<live>: its drain lasts the whole stop timeout
    first = run_cli("rollback", config=cfg, timeout=120)
    assert first.code == 0, first.output
    assert unit(cfg, f"worker-{live}") == "STOPPING"
    second = run_cli("rollback", config=cfg, timeout=120)
    assert second.code == 0, second.output
    assert status(cfg)["active"] == live
    # the live color's worker runs (started once its drain ended), never left stopped
    assert wait_for(lambda: unit(cfg, f"worker-{live}") == "RUNNING", 30), unit(cfg, f"worker-{live}")


def test_two_deploys_of_one_version_at_once_deploy_it_once(env):
    cfg = env["cfg"]
    no_worker_stopping(cfg)
    before = status(cfg)
    previous = before["colors"][before["active"]]["release"]
    procs = [popen(cfg, "--json", "deploy", "--version", "32.0.0") for _ in range(2)]
    codes = [p.wait(240) for p, _t in procs]
    assert codes == [0, 0], ["".join(t.lines)[-800:] for _p, t in procs]
    after = status(cfg)
    idle = "green" if after["active"] == "blue" else "blue"
    assert after["colors"][after["active"]]["version"] == "32.0.0"
    assert after["colors"][idle]["release"] == previous  # the previous release stays warm for a rollback
    hist = [h for h in run_cli("--json", "deploy", "releases", config=cfg).json if h["version"] == "32.0.0"]
    assert len(hist) == 1


def test_a_rollback_waiting_for_a_deploy_rolls_back_from_what_that_deploy_made_live(env):
    cfg, url = env["cfg"], env["url"]
    no_worker_stopping(cfg)
    before = health(url)
    slow = env["root"] / "slow"
    if not slow.exists():
        shutil.copytree(env["src"], slow, ignore=shutil.ignore_patterns("__pycache__"))
        main = slow / "api" / "__main__.py"
        main.write_text("import time\ntime.sleep(4)\n" + main.read_text())
    dep, dep_lines = popen(cfg, "deploy", "--source", str(slow), "--version", "16.0.0")
    lock = DeployLock(open_stack(load_config(cfg)).layout.deploy_dir)
    assert wait_for(lambda: dep_lines.saw("booting"), 120), "".join(dep_lines.lines)
    assert lock.info().held
    rb, rb_lines = popen(cfg, "rollback")
    assert dep.wait(180) == 0, "".join(dep_lines.lines)[-800:]
    assert rb.wait(180) == 0, "".join(rb_lines.lines)[-800:]
    assert wait_for(lambda: rb_lines.saw("waiting for the deploy lock"), 0)
    now = health(url)
    assert (now["version"], now["color"]) == (before["version"], before["color"])  # 16.0.0 was rolled back
    hist = run_cli("--json", "deploy", "releases", config=cfg).json
    assert hist[-1]["action"] == "rollback" and hist[-1]["version"] == before["version"]
    assert hist[-2]["action"] == "deploy" and hist[-2]["version"] == "16.0.0"


def test_a_drain_that_kills_active_jobs_warns_that_they_run_again(env):
    cfg = env["cfg"]
    no_worker_stopping(cfg)
    running_job(env, 20_000)
    r = run_cli("--json", "deploy", "--version", "9.c", config=cfg, timeout=240)
    assert r.code == 0, r.output
    warned = [w for w in r.json["warnings"] if "active job(s) were still running" in w]
    assert len(warned) == 1 and "run again" in warned[0], r.json["warnings"]
    no_worker_stopping(cfg)
    running_job(env, 20_000)
    human = run_cli("deploy", "--version", "9.d", config=cfg, timeout=240)
    assert human.code == 0, human.output
    assert "active job(s) were still running" in human.output and "run again" in human.output


def test_a_deploy_killed_while_draining_is_recorded_live(env):
    cfg, url = env["cfg"], env["url"]
    no_worker_stopping(cfg)
    running_job(env, 20_000)
    p, lines = popen(cfg, "deploy", "--version", "17.0.0")
    assert wait_for(lambda: lines.saw("draining"), 180), "".join(lines.lines)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert health(url)["version"] == "17.0.0"
    last = run_cli("--json", "deploy", "releases", config=cfg).json[-1]
    assert (last["action"], last["version"], last["outcome"]) == ("deploy", "17.0.0", "live")


def test_an_interrupted_deploy_marks_the_release_it_was_booting_failed(env):
    cfg = env["cfg"]
    no_worker_stopping(cfg)
    live = status(cfg)["active"]
    running_job(env, 20_000)  # on worker-<live>
    assert run_cli("rollback", config=cfg, timeout=120).code == 0  # worker-<live> drains for its stop timeout
    assert unit(cfg, f"worker-{live}") == "STOPPING"
    # onto <live>, whose gate asks for 50 healthy answers (10 s): the interrupt lands while it boots, however late
    # this test reads the line that says so
    p, lines = popen(cfg, "deploy", "--version", "24.0.1", env={"AIXSSS_OPS_DEPLOY__HEALTH_THRESHOLD": "50"})
    assert wait_for(lambda: lines.saw(f"booting {live}"), 120), "".join(lines.lines)
    time.sleep(0.5)
    assert p.poll() is None, "".join(lines.lines)
    # SIGTERM, which the CLI takes as an interrupt whatever it inherited (a CI runner's background job inherits
    # SIGINT ignored, and Python then leaves it ignored)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) != 0, "".join(lines.lines)
    spec = status(cfg)["colors"][live]
    assert spec["version"] == "24.0.1" and spec["status"] == "failed", spec
