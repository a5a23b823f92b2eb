"""A rollback boots the release with the app description it was deployed with, not the one ops.toml holds now: a
build step that adds the api's entry module under another name, with the api command changed to match, does not
stop a rollback to a release built before it (local runtime, bundled app). A release with no record of its own
(deployed by an earlier aixsss-ops) boots with the current description, and says so."""

from __future__ import annotations

import json

import httpx
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.context.deploystate import DeployState
from tests.cli import run_cli
from tests.conftest import bundled_app_toml, stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 20.0, "backup": False,
          "warm_minutes": 0}  # the color switched from is stopped: a rollback to it boots it cold
API = '["{python}", "-m", "api"]'


def app_toml(api_command: str, build: str = "") -> str:
    return bundled_app_toml(api_command, build=build)


@pytest.fixture(scope="module")
def stack():
    root = state_tmpdir("aixsss-rbdesc-")
    cfg = stack_config(root, app_toml(API), deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    first = json.loads(run_cli("--json", "deploy", "status", config=cfg).stdout)["colors"]["blue"]["release"]
    # the new build copies the api package to `server`, and the api runs `-m server`: a module the first release
    # does not have
    cfg.write_text(cfg.read_text().replace(app_toml(API), app_toml(
        '["{python}", "-m", "server"]', build='[["cp", "-r", "api", "server"]]')))
    url = f"http://127.0.0.1:{load_config(cfg).ports.proxy}"
    yield {"cfg": cfg, "first": first, "url": url, "state": DeployState(load_config(cfg).state / "deploy")}
    run_cli("stack", "down", config=cfg, timeout=180)


def health(url: str) -> tuple[str, str]:
    body = httpx.get(url + "/api/health", timeout=5).json()
    return body["version"], body["color"]


def test_rollback_boots_the_release_with_the_description_it_was_deployed_with(stack):
    cfg, url = stack["cfg"], stack["url"]
    r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=300)
    assert r.code == 0, r.output
    again = run_cli("--json", "--yes", "deploy", "--version", "2.0.0", "--force", config=cfg, timeout=300)
    assert again.code == 0, again.output
    assert health(url) == ("2.0.0", "blue")

    rb = run_cli("--json", "rollback", "--to", stack["first"], config=cfg, timeout=300)
    assert rb.code == 0, rb.output
    assert rb.json["color"] == "green" and rb.json["warnings"] == [], rb.output
    assert health(url) == ("1.0.0", "green")
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["colors"]["green"]["services"]["worker"]["state"] == "RUNNING", st

    # forward again: the switch to blue runs 2.0.0 with the description it was deployed with (`-m server`)
    sw = run_cli("--json", "deploy", "switch", config=cfg, timeout=300)
    assert sw.code == 0, sw.output
    assert health(url) == ("2.0.0", "blue")


def test_a_release_with_no_record_boots_with_the_current_description_and_says_so(stack):
    cfg, url = stack["cfg"], stack["url"]
    r = run_cli("--json", "--yes", "deploy", "--version", "2.0.0", "--force", config=cfg, timeout=300)
    assert r.code == 0, r.output  # 2.0.0 on green; blue stopped (warm_minutes = 0): a rollback boots it cold
    live = health(url)
    assert live == ("2.0.0", "green")
    stack["state"].description_file(stack["first"]).unlink()
    rb = run_cli("rollback", "--to", stack["first"], config=cfg, timeout=300)
    # booted with `-m server`, which the first release does not have: the gate refuses it, and the warning said why
    assert rb.code == 1, rb.output
    assert f"release {stack['first']} has no record of the app description it was deployed with" in rb.stderr
    assert "No module named server" in rb.stderr
    assert health(url) == live
