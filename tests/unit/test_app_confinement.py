"""The app description's folders (``web_root``, every process ``cwd``) stay inside the release: a path that climbs
out is refused when ops.toml loads (exit 2), and a release whose build left a symlink pointing out of it is refused
before any of its programs is defined (so before a deploy switches the proxy to it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aixsss_ops.config import load_config
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import ConfigError, OpsError
from aixsss_ops.runtime.local_specs import app_processes

API = '[app.processes.api]\ncommand = ["api"]\nport_env = "PORT"\n'


def _toml(tmp_path: Path, app: str = "", api_extra: str = "") -> Path:
    toml = tmp_path / "ops.toml"
    toml.write_text(f"[app]\n{app}\n{API}{api_extra}")
    return toml


@pytest.mark.parametrize("value", ["../../..", "..", "web/../../x", "/etc", "{release}/../x", "{release}/..",
                                   "a/{release}"])
def test_a_web_root_outside_the_release_is_refused_at_load(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, app=f"web_root = {value!r}"))
    assert "app.web_root" in str(e.value) and "must be inside the release" in str(e.value)


@pytest.mark.parametrize("value", ["../../..", "/", "/tmp", "x/../../y", "{release}/../.."])
def test_a_process_cwd_outside_the_release_is_refused_at_load(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        load_config(_toml(tmp_path, api_extra=f"cwd = {value!r}\n"))
    assert "app.processes.api.cwd" in str(e.value) and "must be inside the release" in str(e.value)


@pytest.mark.parametrize("value", [".", "apps/api", "apps/../web", "{release}", "{release}/apps/{color}"])
def test_folders_inside_the_release_load(tmp_path, value):
    cfg = load_config(_toml(tmp_path, app=f"web_root = {value!r}", api_extra=f"cwd = {value!r}\n"))
    assert cfg.app.web_root == value and cfg.app.processes["api"].cwd == value


def test_the_cli_exits_2_naming_the_rule(tmp_path):
    _toml(tmp_path, app='web_root = "../../.."')
    r = subprocess.run([sys.executable, "-m", "aixsss_ops", "config", "show"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "must be inside the release" in r.stderr


def _release(tmp_path: Path) -> Path:
    release = tmp_path / "releases" / "1.0.0-abc"
    (release / "apps" / "api").mkdir(parents=True)
    return release


def test_a_web_root_symlinked_out_of_the_release_is_refused_before_the_programs(tmp_path):
    cfg = load_config(_toml(tmp_path, app='web_root = "dist"'))
    release = _release(tmp_path)
    os.symlink(tmp_path, release / "dist")  # the folder holding ops.toml and the state
    with pytest.raises(OpsError) as e:
        app_processes(cfg, Layout(cfg.state), "blue", release, "1.0.0")
    assert "web_root" in e.value.message and "must be inside the release" in e.value.message


def test_a_cwd_symlinked_out_of_the_release_is_refused_before_the_programs(tmp_path):
    cfg = load_config(_toml(tmp_path, api_extra='cwd = "apps/api/up"\n'))
    release = _release(tmp_path)
    (release / "web").mkdir()
    os.symlink("../../..", release / "apps" / "api" / "up")
    with pytest.raises(OpsError) as e:
        app_processes(cfg, Layout(cfg.state), "blue", release, "1.0.0")
    assert "api's cwd" in e.value.message and "must be inside the release" in e.value.message


def test_folders_inside_the_release_give_the_resolved_folder(tmp_path):
    cfg = load_config(_toml(tmp_path, app='web_root = "web"', api_extra='cwd = "apps/api"\n'))
    release = _release(tmp_path)
    os.symlink("apps", release / "web")  # a symlink that stays inside is fine
    defs = app_processes(cfg, Layout(cfg.state), "blue", release, "1.0.0")
    assert defs[0].program.directory == (release / "apps" / "api").resolve()


# -- doctor --only/--skip: every name doctor prints selects the check that prints it -----------------------------

def test_doctor_selection_accepts_every_finding_name_it_prints():
    import re

    from aixsss_ops.doctor.registry import select

    root = Path(__file__).resolve().parents[2] / "aixsss_ops"
    text = "".join(p.read_text() for d in ("doctor", "envcheck") for p in (root / d).glob("*.py"))
    printed = set(re.findall(r'Finding\(\s*"([a-z0-9.-]+)"', text)) | {"host.disk-state", "host.disk-backup"}
    assert {"deploy.lock", "deploy.idle-color"} <= printed
    for name in sorted(printed):
        assert select([name], None), name
        assert len(select(None, [name])) < len(select())
    assert [c.name for c in select(["deploy.lock", "host.disk-state"])] == ["deploy.state", "host.disk"]


# -- messages ------------------------------------------------------------------------------------------------------

def test_envexec_names_a_missing_program_in_one_line():
    r = subprocess.run([sys.executable, "-m", "aixsss_ops.runtime.envexec", "--", "/bin/nodez-missing", "x"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 127
    assert r.stderr == "cannot run /bin/nodez-missing: not found\n"


def test_a_table_cell_is_shown_as_written_never_as_markup():
    import io

    from rich.console import Console

    from aixsss_ops.output import Output

    out = Output()
    out._console = Console(file=io.StringIO(), width=200, no_color=True)
    out.table("stack", ["service", "detail"], [("worker-blue", "logged '[worker] ready' [bold]x[/bold]")])
    assert "logged '[worker] ready' [bold]x[/bold]" in out._console.file.getvalue()
