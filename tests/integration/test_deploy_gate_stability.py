"""The health gate proves the new color's processes stable: an api that answers its readiness check but dies every
few seconds (supervisord starting it again each time) fails the deploy, on the local runtime with the bundled app;
the live color keeps serving and the failure shows the processes' last log lines."""

from __future__ import annotations

import re

import httpx
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import bundled_app_toml, stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.5, "health_threshold": 3, "health_timeout": 30.0, "backup": False}
CRASH_AFTER = 4  # seconds each run of the crashing api lives: its readiness passes 3 times in a row well before
WORKER_DELAY = 5  # seconds the slow worker waits before it starts: the gate waits for it, the api dies meanwhile
API = '["{python}", "-m", "api"]'
WORKER = '["{python}", "-m", "worker"]'
CRASHING_API = ('["{python}", "-c", "import os, runpy, threading; '
                f"threading.Timer({CRASH_AFTER}, os._exit, (3,)).start(); "
                "runpy.run_module('api', run_name='__main__', alter_sys=True)\"]")
SLOW_WORKER = ('["{python}", "-c", "import runpy, time; '
               f"time.sleep({WORKER_DELAY}); "
               "runpy.run_module('worker', run_name='__main__', alter_sys=True)\"]")


def app_toml(api: str, worker: str) -> str:
    return bundled_app_toml(api, worker)


@pytest.fixture(scope="module")
def stack():
    root = state_tmpdir("aixsss-gate-")
    cfg = stack_config(root, app_toml(API, WORKER), deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "url": open_stack(load_config(cfg)).url}
    run_cli("stack", "down", config=cfg, timeout=180)


def health(url: str) -> tuple[str, str]:
    body = httpx.get(url + "/api/health", timeout=5).json()
    return body["version"], body["color"]


def test_an_api_that_keeps_crashing_fails_the_gate_and_the_live_color_keeps_serving(stack):
    cfg, url = stack["cfg"], stack["url"]
    before = health(url)
    text = cfg.read_text()
    cfg.write_text(text.replace(f"command = {API}", f"command = {CRASHING_API}")
                   .replace(f"command = {WORKER}", f"command = {SLOW_WORKER}"))
    try:
        r = run_cli("deploy", "--version", "2.0.0", config=cfg, timeout=300)
    finally:
        cfg.write_text(text)
    assert r.code == 1, r.output
    assert "is not stable" in r.stderr or "did not pass the health gate" in r.stderr, r.stderr
    assert re.search(r"api-green (was restarted \(pid \d+ -> \d+\)|exited after it was seen running)", r.stderr), \
        r.stderr
    assert "last lines of api-green" in r.stderr
    assert "tearing green down; blue keeps serving" in r.stderr
    for _ in range(5):
        assert health(url) == before
    st = run_cli("--json", "deploy", "status", config=cfg)
    assert st.json["active"] == "blue" and st.json["proxy_target"] == "blue", st.output
    assert st.json["colors"]["green"]["status"] == "failed"
    stack_ = open_stack(load_config(cfg))
    assert {stack_.unit_state("api-green"), stack_.unit_state("worker-green")} <= {"STOPPED", "EXITED"}


def test_a_stable_color_still_passes_the_gate(stack):
    cfg, url = stack["cfg"], stack["url"]
    r = run_cli("--json", "deploy", "--version", "2.0.1", config=cfg, timeout=300)
    assert r.code == 0, r.output
    assert health(url) == ("2.0.1", "green")
