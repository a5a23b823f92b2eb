"""The app description a release was deployed with (recorded in the deploy state, put in effect by
``Stack.as_deployed``), and the gate's watch over the new color's processes (``health.Stability``)."""

from __future__ import annotations

import json
import stat

import pytest

from aixsss_ops.config import AppSection, OpsConfig, ProcessSpec, Readiness
from aixsss_ops.context.deploystate import DeployState
from aixsss_ops.deploy.health import Stability
from aixsss_ops.errors import OpsError
from aixsss_ops.stack.manager import Stack, app_description, described_app

RELEASE = "1.0.0-0123456789ab"


def other_app() -> AppSection:
    return AppSection(web_root="dist/web", processes={
        "api": ProcessSpec(command=["node", "dist/server.js"], cwd="apps/api", port_env="PORT",
                           env={"NODE_ENV": "production"}, ready=Readiness(http="/health", json_fields={"ok": True}),
                           stop_signal="INT", stop_timeout=12.0),
        "mailer": ProcessSpec(command=["node", "mailer.js"], ready=Readiness(log="mailer up"), count=2),
    })


def stack_on(tmp_path) -> Stack:
    """A Stack with only what ``record_description``/``as_deployed`` use: its configuration and deploy state."""
    s = Stack.__new__(Stack)
    s.cfg = OpsConfig()
    s.deploy_state = DeployState(tmp_path / "deploy")
    return s


def test_a_description_survives_its_record_as_json():
    app = other_app()
    data = json.loads(json.dumps(app_description(app)))
    assert data["processes"]["api"]["ready"]["json"] == {"ok": True}  # the key as ops.toml writes it
    back = described_app(AppSection(), data)
    assert back.processes == app.processes and back.web_root == "dist/web"


def test_a_record_that_is_no_description_is_refused():
    data = app_description(other_app())
    del data["processes"]["api"]
    with pytest.raises(ValueError, match="an 'api' process is required"):
        described_app(AppSection(), data)
    with pytest.raises(ValueError):
        described_app(AppSection(), {"processes": {"api": {"command": []}}})


def test_the_record_is_private_and_a_missing_one_is_none(tmp_path):
    state = DeployState(tmp_path / "deploy")
    assert state.description(RELEASE) is None
    state.save_description(RELEASE, {"processes": {}})
    assert stat.S_IMODE(state.description_file(RELEASE).stat().st_mode) == 0o600
    assert state.description(RELEASE) == {"processes": {}}
    state.description_file(RELEASE).write_text("{not json")
    with pytest.raises(OpsError, match="is unreadable"):
        state.description(RELEASE)


def test_as_deployed_puts_the_recorded_description_in_effect_and_restores_the_current_one(tmp_path):
    s = stack_on(tmp_path)
    current = s.cfg.app
    s.cfg.app = other_app()
    s.record_description(RELEASE)
    s.cfg.app = current
    with s.as_deployed(RELEASE) as note:
        assert note is None
        assert s.cfg.app.processes["api"].command == ["node", "dist/server.js"]
        assert s.cfg.app.web_root == "dist/web" and s.cfg.app.source == current.source
    assert s.cfg.app is current
    with pytest.raises(RuntimeError), s.as_deployed(RELEASE):
        raise RuntimeError("a failed boot")
    assert s.cfg.app is current


def test_as_deployed_without_a_usable_record_keeps_the_current_description_and_says_so(tmp_path):
    s = stack_on(tmp_path)
    current = s.cfg.app
    with s.as_deployed(RELEASE) as note:
        assert s.cfg.app is current
        assert note.startswith(f"release {RELEASE} has no record of the app description")
    s.deploy_state.description_file(RELEASE).parent.mkdir(parents=True)
    s.deploy_state.description_file(RELEASE).write_text('{"processes": {"worker": {"command": ["w"]}}}')
    with s.as_deployed(RELEASE) as note:
        assert s.cfg.app is current
        assert "is unusable" in note and "an 'api' process is required" in note


def test_stability_names_a_process_restarted_or_exited_since_first_seen():
    w = Stability()
    w.watch("api-green")
    w.watch("worker-green")
    assert w.check({"api-green": ("STARTING", 100, None)}) is None  # the worker is not started yet
    assert w.check({"api-green": ("RUNNING", 100, 1000.0), "worker-green": ("STARTING", 200, None)}) is None
    assert w.check({"api-green": ("RUNNING", 100, 1000.4), "worker-green": ("RUNNING", 200, 1001.0)}) is None
    why = w.check({"api-green": ("RUNNING", 101, 1006.0), "worker-green": ("RUNNING", 200, 1001.0)})
    assert why == "api-green was restarted (pid 100 -> 101): it exited and its runtime started it again"
    why = w.check({"api-green": ("RUNNING", 100, 1000.0), "worker-green": ("EXITED", None, None)})
    assert why.startswith("worker-green exited after it was seen running (pid 200): it is EXITED")
    assert w.check({"api-green": ("RUNNING", 100, 1000.0)}).startswith("worker-green exited")  # gone: ABSENT


def test_stability_without_pids_compares_start_times():
    w = Stability()
    w.watch("api-green")
    assert w.check({"api-green": ("RUNNING", None, 1000.0)}) is None
    assert w.check({"api-green": ("RUNNING", None, 1001.0)}) is None  # a whole-second uptime moves it
    assert w.check({"api-green": ("RUNNING", None, 1005.0)}).startswith("api-green was restarted")
