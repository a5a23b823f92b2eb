"""What `deploy` refuses before touching anything: an invalid --version, an unreadable colors.json, a rollback with
nothing to go back to, a status of a stack never brought up; and the plan of a release not built yet."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aixsss_ops.context.deploystate import Colors, ColorSpec, DeployState
from aixsss_ops.deploy.lock import DeployLock
from tests.cli import REPO, run_cli


def config(tmp_path: Path) -> Path:
    path = tmp_path / "ops.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n\n[app]\nsource = "{REPO / "app"}"\n')
    return path


def releases_of(tmp_path: Path) -> list[str]:
    folder = tmp_path / "state" / "releases"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.exists() else []


@pytest.mark.parametrize("version", ["", "x" * 300, "1.0/../2", "1.0 0", ".hidden", "v1;rm", "x" * 129])
def test_an_invalid_version_is_refused_before_anything(tmp_path, version):
    cfg = config(tmp_path)
    r = run_cli("deploy", "--version", version, config=cfg)
    assert r.code == 2, r.output
    assert "invalid version" in r.stderr and "internal error" not in r.output
    assert releases_of(tmp_path) == []  # nothing built


def test_the_longest_valid_version_is_planned(tmp_path):
    r = run_cli("--json", "deploy", "--dry-run", "--version", "1.2.3-rc.1+b" + "x" * 116, config=config(tmp_path))
    assert r.code == 0, r.output
    assert r.json["version"] == "1.2.3-rc.1+b" + "x" * 116


def test_dry_run_of_a_release_not_built_yet_says_it_would_build_it(tmp_path):
    r = run_cli("--json", "deploy", "--dry-run", "--version", "7.1.0", config=config(tmp_path))
    assert r.code == 0, r.output
    plan = r.json["plan"]
    assert plan[0].startswith(f"build release {r.json['release']}")
    assert any("checked after the build" in step for step in plan)
    assert "--migrations-dir" not in r.output and "does not exist" not in r.output
    assert not any(name.startswith("7.1.0-") for name in releases_of(tmp_path))


@pytest.mark.parametrize(("content", "command"), [
    ('{"active": "purple", "colors": {}}', ["deploy", "rollback"]),
    ('{"active": "blue", "colors": {"blue": {"release": "1.0.0-abc", "source": "/x", "version": "1.0.0"}, '
     '"red": {"release": "1.0.0-abc", "source": "/x", "version": "1.0.0"}}}', ["deploy", "status"]),
    ('{"active": "blue", "colo', ["deploy", "status"]),
    ('{"active": "blue", "colo', ["deploy", "rollback"]),
    ('["blue"]', ["deploy", "switch"]),
])
def test_an_invalid_colors_json_is_one_line_naming_it(tmp_path, content, command):
    cfg = config(tmp_path)
    colors = tmp_path / "state" / "deploy" / "colors.json"
    colors.parent.mkdir(parents=True)
    colors.write_text(content)
    r = run_cli(*command, config=cfg)
    assert r.code == 1, r.output
    assert "internal error" not in r.output and "Traceback" not in r.output
    assert str(colors) in r.stderr
    assert "hint" in r.stderr.lower()
    assert colors.read_text() == content  # left as it was


def test_a_rollback_with_no_previous_release_is_a_failed_precondition(tmp_path):
    cfg = config(tmp_path)
    state = DeployState(tmp_path / "state" / "deploy")
    state.dir.mkdir(parents=True)
    state.save(Colors("blue", {"blue": ColorSpec("1.0.0-abc", str(tmp_path), "1.0.0", status="live")}))
    r = run_cli("deploy", "rollback", config=cfg)
    assert r.code == 3, r.output
    assert "no previous release" in r.stderr
    assert json.loads(state.colors_file.read_text())["active"] == "blue"


def test_status_of_a_stack_never_brought_up_is_a_failed_precondition(tmp_path):
    r = run_cli("deploy", "status", config=config(tmp_path))
    assert r.code == 3, r.output
    assert "never brought up" in r.stderr and "stack up" in r.stderr
    assert releases_of(tmp_path) == []  # status builds nothing


def test_releasing_a_lock_a_live_process_holds_is_a_failed_precondition(tmp_path):
    cfg = config(tmp_path)
    lock = DeployLock(tmp_path / "state" / "deploy")
    lock.acquire(1, {"action": "deploy", "version": "held-by-test"})
    try:
        r = run_cli("deploy", "lock", "release", config=cfg)
        assert r.code == 3, r.output
        assert "held by a live process" in r.stderr and "held-by-test" in r.stderr
        assert lock.info().held
    finally:
        lock.release()
