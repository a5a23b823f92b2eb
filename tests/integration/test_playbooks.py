"""The bundled playbooks on a real embedded stack (Postgres, Redis, SeaweedFS, nginx, supervisord): a release
to success, a failed deploy and a failed smoke test that roll back, a SIGKILLed run that resumes without
repeating its backup, the restore drill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from aixsss_ops.backup.catalog import Catalog
from aixsss_ops.config import load_config
from aixsss_ops.stack.engines import open_stack
from tests.cli import EXE, REPO, run_cli
from tests.conftest import stack_config, state_tmpdir
from tests.integration.test_deploy import Watcher

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 20.0, "lock_timeout": 60.0, "backup": False}


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-play-")
    cfg = stack_config(root, deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    conf = load_config(cfg)
    yield {"cfg": cfg, "root": root, "conf": conf, "url": open_stack(conf).url,
           "runs": conf.state / "playbooks" / "runs", "backups": conf.backup_dir}
    run_cli("stack", "down", config=cfg, timeout=180)


def health(url: str) -> dict:
    return httpx.get(url + "/api/health", timeout=5).json()


def app_copy(root: Path, name: str, api: str = "", worker: str = "") -> Path:
    """A copy of the bundled app with code put in front of the api's and/or the worker's entry point."""
    src = root / name
    if not src.exists():
        shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
        for svc, prelude in (("api", api), ("worker", worker)):
            if prelude:
                main = src / svc / "__main__.py"
                main.write_text(prelude + "\n" + main.read_text())
    return src


def backups(env) -> list[str]:
    return [e.id for e in Catalog(env["backups"]).complete()]


def play(env, *args, timeout=300):
    return run_cli("--yes", "--json", "play", *args, config=env["cfg"], timeout=timeout)


def test_dry_run_prints_the_plan_and_runs_nothing(env):
    r = run_cli("--json", "play", "release", "--dry-run", "--var", "version=7.7.7", config=env["cfg"])
    assert r.code == 0, r.output
    plan = r.json["plan"]
    assert [p["id"] for p in plan if p["list"] == "steps"] == [
        "env", "doctor", "live_before", "backup", "lint", "migrate", "deploy", "smoke"]
    deploy = next(p for p in plan if p["id"] == "deploy")
    assert deploy["params"]["version"] == "7.7.7" and deploy["destructive"] and deploy["on_failure"] == "rollback"
    assert not env["runs"].exists() or not list(env["runs"].glob("*.json"))
    assert health(env["url"])["version"] != "7.7.7"


def test_a_destructive_playbook_refuses_without_yes_and_a_terminal(env):
    r = run_cli("play", "release", config=env["cfg"])
    assert r.code == 2 and "pass --yes" in r.stderr
    assert not env["runs"].exists() or not list(env["runs"].glob("*.json"))


def test_release_runs_to_success(env):
    before = backups(env)
    r = play(env, "release", "--var", "version=2.0.0")
    assert r.code == 0, r.output
    rec = r.json
    assert rec["ok"] is True and rec["status"] == "succeeded"
    assert [s["status"] for s in rec["steps"]] == ["succeeded"] * 8
    assert health(env["url"])["version"] == "2.0.0"
    assert rec["steps"][6]["output"]["version"] == "2.0.0"
    assert rec["steps"][7]["output"]["job_status"] == "succeeded"
    # the backup step took exactly one backup, labelled with the run and step
    new = [b for b in backups(env) if b not in before]
    assert new == [rec["steps"][3]["output"]["id"]]
    label = Catalog(env["backups"]).get(new[0]).manifest["label"]
    assert f"play:{rec['id']}/backup" in label and "pre-release 2.0.0" in label
    # the run is recorded and listed
    stored = json.loads((env["runs"] / f"{rec['id']}.json").read_text())
    assert stored["status"] == "succeeded" and stored["vars"]["version"] == "2.0.0"
    runs = run_cli("--json", "play", "runs", config=env["cfg"]).json
    assert any(x["id"] == rec["id"] and x["status"] == "succeeded" for x in runs)


def test_a_release_whose_deploy_fails_rolls_back_and_the_old_version_keeps_serving(env):
    url = env["url"]
    live = health(url)
    src = app_copy(env["root"], "crashing", api="raise SystemExit('boom: this release cannot start')")
    with Watcher(url) as w:
        r = play(env, "release", "--var", "version=9.9.9-crash", "--var", f"source={src}")
    assert r.code == 1, r.output
    rec = r.json
    assert rec["status"] == "rolled_back" and rec["failure"]["step"] == "deploy"
    assert "boom: this release cannot start" in (rec["steps"][6]["error"]["details"] or "")
    assert rec["steps"][7]["status"] == "pending"  # smoke never ran
    steps = {s["id"]: s for s in rec["rollback"]["steps"]}
    assert steps["switch_back"]["status"] == "succeeded" and steps["switch_back"]["output"]["noop"] is True
    assert steps["restore_db"]["status"] == "skipped"
    assert steps["smoke_after_rollback"]["output"]["version"] == live["version"]
    assert "rolled back: step deploy failed" in r.stderr
    h = health(url)
    assert (h["version"], h["color"]) == (live["version"], live["color"])
    assert not w.errors and w.seen and all(v == live["version"] for _s, v, _c in w.seen)


def test_a_release_whose_smoke_test_fails_switches_back_and_restores_the_database(env):
    url, conf = env["url"], env["conf"]
    live = health(url)
    src = app_copy(env["root"], "jobs-fail", worker=(
        "import worker.processor as _p\n"
        "def _down(*a, **k):\n"
        "    raise RuntimeError('provider unreachable in this release')\n"
        "_p.stand_in_provider = _down\n"))
    r = play(env, "release", "--var", "version=8.0.0-badjobs", "--var", f"source={src}",
             "--var", "restore_on_failure=true")
    assert r.code == 3, r.output  # the smoke check's exit code
    rec = r.json
    assert rec["status"] == "rolled_back" and rec["failure"]["step"] == "smoke"
    assert rec["steps"][6]["status"] == "succeeded" and rec["steps"][6]["output"]["version"] == "8.0.0-badjobs"
    assert "failed" in rec["steps"][7]["error"]["message"]
    steps = {s["id"]: s for s in rec["rollback"]["steps"]}
    assert steps["switch_back"]["output"]["noop"] is False
    assert steps["switch_back"]["output"]["color"] == live["color"]
    restored = steps["restore_db"]["output"]
    assert restored["backup"] == rec["steps"][3]["output"]["id"]
    previous = restored["database"]["previous"]
    assert previous.startswith(f"{conf.postgres.database}_pre_restore_")
    assert steps["smoke_after_rollback"]["status"] == "succeeded"
    h = health(url)
    assert (h["version"], h["color"]) == (live["version"], live["color"])
    import psycopg

    stack = open_stack(conf)
    with psycopg.connect(stack.admin_url().split("?")[0], autocommit=True) as c:
        names = {row[0] for row in c.execute("SELECT datname FROM pg_database")}
    assert previous in names  # the database the failed release used is kept for inspection


def _newest_run(env, exclude: set[str]) -> dict | None:
    if not env["runs"].exists():
        return None
    for p in sorted(env["runs"].glob("*.json")):
        if p.stem not in exclude:
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:  # never happens with atomic writes; fail loudly below if it does
                raise
    return None


def test_a_release_killed_during_the_deploy_resumes_without_repeating_the_backup(env):
    url = env["url"]
    src = app_copy(env["root"], "slow", api="import time\ntime.sleep(4)")
    existing = {p.stem for p in env["runs"].glob("*.json")}
    before = backups(env)
    e = {k: v for k, v in os.environ.items() if not k.startswith("AIXSSS_OPS_")}
    argv = [EXE, "--config", str(env["cfg"]), "--yes", "--json", "play", "release",
            "--var", "version=3.0.0-slow", "--var", f"source={src}"]
    p = subprocess.Popen(argv, cwd=str(REPO), env={**e, "NO_COLOR": "1"}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    rec = None
    while time.monotonic() < deadline:
        rec = _newest_run(env, existing)
        if rec and rec["steps"][6]["status"] == "running" and rec["steps"][6].get("pid"):
            break
        assert p.poll() is None, p.communicate()
        time.sleep(0.05)
    else:
        pytest.fail(f"the deploy step never started: {rec}")
    time.sleep(1.5)  # inside the deploy: booting the slow release
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    step_pid = rec["steps"][6]["pid"]
    killed = json.loads((env["runs"] / f"{rec['id']}.json").read_text())
    assert [s["status"] for s in killed["steps"]] == ["succeeded"] * 6 + ["running", "pending"]
    backup_step = killed["steps"][3]
    assert [b for b in backups(env) if b not in before] == [backup_step["output"]["id"]]
    # the step's process died with the runner: nothing keeps deploying behind the operator's back
    gone = time.monotonic() + 10
    while time.monotonic() < gone:
        try:
            os.kill(step_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the deploy step's process {step_pid} outlived the killed runner")
    listed = run_cli("--json", "play", "runs", config=env["cfg"]).json
    assert next(x for x in listed if x["id"] == rec["id"])["status"] == "interrupted"
    assert next(x for x in listed if x["id"] == rec["id"])["next_step"] == "deploy"

    r = play(env, "--resume", rec["id"])
    assert r.code == 0, r.output
    done = r.json
    assert done["status"] == "succeeded"
    assert done["steps"][3] == backup_step  # not run again: same record, same backup
    assert [b for b in backups(env) if b not in before] == [backup_step["output"]["id"]]
    assert all(s["attempts"] == 1 for s in done["steps"][:6])
    assert done["steps"][6]["attempts"] == 2 and done["steps"][6]["output"]["version"] == "3.0.0-slow"
    assert len(done["processes"]) == 2 and done["processes"][1]["resume"] is True
    assert health(url)["version"] == "3.0.0-slow"
    again = play(env, "--resume", rec["id"])
    assert again.code == 2 and "already ended: succeeded" in again.json["error"]


def test_rotate_key_reencrypts_provider_keys_and_the_app_keeps_working(env):
    from aixsss_ops.context.settings import read_env_file
    from aixsss_ops.crypto import derive_key, fingerprint

    api_env = env["conf"].state / "env" / "api.env"
    old = read_env_file(api_env)["API_KEY_ENCRYPTION_KEY"]
    created = httpx.post(env["url"] + "/api/ai-profiles", timeout=10, json={
        "name": "before-rotation", "provider": "openai_compatible", "apiKey": "sk-before-rotation"})
    assert created.status_code in (200, 201), created.text  # at least one stored secret to re-encrypt
    before = backups(env)
    r = play(env, "rotate-key")
    assert r.code == 0, r.output
    steps = {s["id"]: s for s in r.json["steps"]}
    assert all(s["status"] == "succeeded" for s in steps.values())
    rot = steps["rotate"]["output"]
    assert rot["phase"] == "done" and rot["old_fingerprint"] == fingerprint(derive_key(old))
    assert rot["new_fingerprint"] != rot["old_fingerprint"] and rot["reencrypted"] > 0
    new = read_env_file(api_env)["API_KEY_ENCRYPTION_KEY"]
    assert new != old and fingerprint(derive_key(new)) == rot["new_fingerprint"]
    assert read_env_file(env["conf"].state / "env" / "worker.env")["API_KEY_ENCRYPTION_KEY"] == new
    after = steps["keys_after"]["output"]
    assert after["key_fingerprint"] == rot["new_fingerprint"] and after["decrypt_ok"] == after["values"] > 0
    assert steps["smoke"]["output"]["job_status"] == "succeeded"  # the worker decrypts with the new key
    assert [b for b in backups(env) if b not in before] == [steps["backup"]["output"]["id"]]


def test_restore_drill_restores_the_newest_backup_into_a_scratch_database(env):
    newest = backups(env)[-1]
    r = play(env, "restore-drill")
    assert r.code == 0, r.output
    rec = r.json
    steps = {s["id"]: s for s in rec["steps"]}
    assert steps["backup"]["status"] == "skipped"
    assert steps["newest"]["output"]["id"] == newest
    out = steps["restore"]["output"]
    assert out["id"] == newest and out["restored"] is True and out["ok"] is True and out["tables_compared"] > 0
    meta = Catalog(env["backups"]).get(newest).meta["verify"]
    assert meta["ok"] is True and meta["restore"] is True
    import psycopg

    with psycopg.connect(open_stack(env["conf"]).admin_url().split("?")[0], autocommit=True) as c:
        assert not [n for (n,) in c.execute("SELECT datname FROM pg_database") if n.startswith("aixsss_verify_")]
    # with take_backup it drills a fresh backup
    r2 = play(env, "restore-drill", "--var", "take_backup=true")
    assert r2.code == 0, r2.output
    fresh = {s["id"]: s for s in r2.json["steps"]}
    assert fresh["newest"]["output"]["id"] == fresh["backup"]["output"]["id"] != newest
