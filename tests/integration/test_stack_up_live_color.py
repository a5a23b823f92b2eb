"""`stack up` after the app description in ops.toml changed: a running color keeps running as it was deployed (a
changed description goes live only through `deploy`, behind its health gate); stack up says so and exits 0."""

from __future__ import annotations

import json

import httpx
import pytest

from aixsss_ops.config import load_config
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import bundled_app_toml, stack_config, state_tmpdir

API_COMMAND = '["{python}", "-m", "api"]'


def app_toml(api_command: str) -> str:
    return bundled_app_toml(api_command)


@pytest.fixture()
def stack():
    root = state_tmpdir("aixsss-upcolor-")
    cfg = stack_config(root, app_toml(API_COMMAND))
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "url": open_stack(load_config(cfg)).url}
    run_cli("stack", "down", config=cfg, timeout=180)


def test_stack_up_leaves_the_live_color_as_deployed_when_the_description_changed(stack):
    cfg, url = stack["cfg"], stack["url"]
    before = httpx.get(url + "/api/health", timeout=5).json()
    text = cfg.read_text()
    cfg.write_text(text.replace(f"command = {API_COMMAND}", 'command = ["nodez-missing", "dist/main.js"]'))

    r = run_cli("--json", "stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    warnings = json.loads(r.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("api-blue keeps running as deployed"), warnings
    assert "differs from the deployed one" in r.stderr and "`aixsss-ops deploy --force` applies it" in r.stderr
    for _ in range(5):
        h = httpx.get(url + "/api/health", timeout=5)
        assert h.status_code == 200 and h.json()["version"] == before["version"], h.text

    # the description put back: nothing to say, nothing restarted
    cfg.write_text(text)
    r = run_cli("--json", "stack", "up", config=cfg, timeout=240)
    assert r.code == 0 and json.loads(r.stdout)["warnings"] == [], r.output
    assert httpx.get(url + "/api/health", timeout=5).status_code == 200
