"""A release's build steps stopped half-way (their timeout, SIGTERM or SIGKILL of the CLI): no program of a step
outlives the build, the half-built release goes, and the next deploy builds it and goes live."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.stack.engines import open_stack
from tests.cli import EXE, REPO, run_cli
from tests.conftest import stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 8.0, "lock_timeout": 60.0, "backup": False}


def app_toml(go: Path, seconds: str, timeout: float) -> str:
    """The bundled app, built by one step that finishes at once when ``go`` exists and otherwise leaves a program in
    the background and waits on another (both ``sleep <seconds>``: the marker this test looks for)."""
    script = f"test -e {go} || {{ sleep {seconds} & sleep {seconds}; }}"
    return "\n".join([f'source = "{REPO / "app"}"', "", "[[app.build]]", f"run = {json.dumps(['sh', '-c', script])}",
                      f"timeout = {timeout}"])


def marked(seconds: str) -> list[int]:
    """The processes whose command line holds the marker."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if seconds.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                pass
    return found


def wait_for(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (v := cond()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return v


def releases_of(root: Path, version: str) -> list[str]:
    return sorted(p.name for p in (root / "state" / "releases").iterdir() if p.name.startswith(f"{version}-"))


def deploy(cfg: Path, version: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")} | {"NO_COLOR": "1"}
    return subprocess.Popen([EXE, "--config", str(cfg), "--yes", "deploy", "--version", version], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-build-int-")
    go = root / "go"
    go.touch()
    seconds = f"{random.randint(1000, 9999)}.{random.randint(10**8, 10**9)}"
    cfg = stack_config(root, app_toml(go, seconds, 120), deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    go.unlink()
    yield {"cfg": cfg, "root": root, "go": go, "seconds": seconds, "url": open_stack(load_config(cfg)).url}
    go.touch()
    run_cli("stack", "down", config=cfg, timeout=180)


def interrupted_build(env, version: str, sig: int) -> tuple[int, str]:
    """``deploy --version`` stopped by ``sig`` while its build step runs; (exit status, stderr)."""
    env["go"].unlink(missing_ok=True)
    p = deploy(env["cfg"], version)
    try:
        wait_for(lambda: len(marked(env["seconds"])) >= 2, 60, "the build step did not start its two programs")
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    return p.returncode, err


def rerun_goes_live(env, version: str) -> None:
    env["go"].touch()
    p = deploy(env["cfg"], version)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, out + err
    assert httpx.get(env["url"] + "/api/health", timeout=5).json()["version"] == version
    rel = releases_of(env["root"], version)
    assert len(rel) == 1 and not (env["root"] / "state" / "releases" / rel[0] / ".building").exists(), rel


def test_sigterm_during_a_build_is_an_interrupt_that_leaves_nothing_behind(env):
    code, err = interrupted_build(env, "3.1.0", signal.SIGTERM)
    assert code == 143, err
    assert "error: interrupted" in err and "Traceback" not in err, err
    wait_for(lambda: not marked(env["seconds"]), 5, f"programs of the build step outlived it: {marked(env['seconds'])}")
    assert releases_of(env["root"], "3.1.0") == [], "the half-built release stayed"
    rerun_goes_live(env, "3.1.0")


def test_sigkill_during_a_build_kills_the_step_and_the_rerun_builds_cleanly(env):
    code, _ = interrupted_build(env, "3.2.0", signal.SIGKILL)
    assert code == -signal.SIGKILL
    # the rerun starts at once: it waits for what the killed build left to be gone, then builds the release anew
    rerun_goes_live(env, "3.2.0")
    assert not marked(env["seconds"]), "programs of the killed build step outlived it"


def test_a_build_step_timeout_kills_every_program_of_the_step():
    root = state_tmpdir("aixsss-build-timeout-")
    seconds = f"{random.randint(1000, 9999)}.{random.randint(10**8, 10**9)}"
    cfg = stack_config(root, app_toml(root / "go", seconds, 3), deploy=DEPLOY)
    r = run_cli("--yes", "deploy", "--version", "3.3.0", config=cfg, timeout=60)
    assert r.code == 1 and "did not finish within 3s" in r.output, r.output
    wait_for(lambda: not marked(seconds), 5, f"programs of the timed-out step outlived it: {marked(seconds)}")
    assert releases_of(root, "3.3.0") == []
