"""Blue/green deploys on the local runtime: real processes, real nginx, real Postgres/Redis/S3."""

from __future__ import annotations

import json
import os
import re
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
from tests.conftest import stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 8.0, "lock_timeout": 60.0, "backup": False}


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-deploy-")
    cfg = stack_config(root, deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "root": root, "url": open_stack(load_config(cfg)).url}
    run_cli("stack", "down", config=cfg, timeout=180)


def health(url: str) -> dict:
    return httpx.get(url + "/api/health", timeout=5).json()


def broken_copy(root: Path, name: str, prelude: str) -> Path:
    src = root / name
    if not src.exists():
        shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
        main = src / "api" / "__main__.py"
        main.write_text(prelude + "\n" + main.read_text())
    return src


class Watcher(threading.Thread):
    """Polls /api/health through the proxy and records every answer (or failure)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen, self.errors, self.stop = url, [], [], threading.Event()

    def run(self):
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                try:
                    r = c.get(self.url + "/api/health")
                    self.seen.append((r.status_code, r.json().get("version"), r.json().get("color")))
                except (httpx.HTTPError, ValueError) as e:
                    self.errors.append(repr(e))
                time.sleep(0.02)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(10)


def test_deploy_v2_to_green_then_rollback_is_a_warm_switch(env):
    cfg, url = env["cfg"], env["url"]
    assert health(url)["color"] == "blue"
    before = health(url)["version"]
    with Watcher(url) as w:
        r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=180)
    assert r.code == 0, r.output
    res = r.json
    assert res["color"] == "green" and res["previous_color"] == "blue" and res["release"].startswith("2.0.0-")
    h = health(url)
    assert (h["version"], h["color"]) == ("2.0.0", "green")
    assert not w.errors and all(s == 200 for s, _v, _c in w.seen), w.errors[:3]
    assert {v for _s, v, _c in w.seen} <= {before, "2.0.0"}

    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["active"] == "green" and st["proxy_target"] == "green" and st["consistent"]
    assert st["colors"]["blue"]["status"] == "warm"
    assert st["colors"]["blue"]["services"]["api"]["state"] == "RUNNING"  # kept warm for rollback
    assert st["colors"]["blue"]["services"]["worker"]["state"] == "STOPPED"  # drained

    rb = run_cli("--json", "rollback", config=cfg, timeout=120)
    assert rb.code == 0, rb.output
    assert rb.json["color"] == "blue" and rb.json["health_checks"] == 1
    assert health(url)["color"] == "blue" and health(url)["version"] == before
    hist = run_cli("--json", "deploy", "releases", config=cfg).json
    assert hist[-1]["action"] == "rollback" and hist[-1]["warm"] is True


def test_same_release_twice_is_a_noop(env):
    cfg = env["cfg"]
    live = run_cli("--json", "deploy", "status", config=cfg).json
    version = live["colors"][live["active"]]["version"]
    r = run_cli("--json", "deploy", "--version", version, config=cfg)
    assert r.code == 0 and r.json["noop"] is True
    assert run_cli("--json", "deploy", "releases", config=cfg).json[-1]["action"] == "rollback"


@pytest.mark.parametrize("name, prelude, expect", [
    ("crashing", "raise SystemExit('boom: this release cannot start')", "boom: this release cannot start"),
    ("hanging", "import time\ntime.sleep(3600)", "did not pass the health gate"),
])
def test_a_broken_release_never_receives_traffic(env, name, prelude, expect):
    cfg, url = env["cfg"], env["url"]
    live = health(url)
    src = broken_copy(env["root"], name, prelude)
    with Watcher(url) as w:
        r = run_cli("deploy", "--source", str(src), "--version", f"9.9.9-{name}", config=cfg, timeout=180)
    assert r.code == 1, r.output
    assert expect in r.stderr
    assert "last lines of api-" in r.stderr  # the failing service's log is shown
    assert not w.errors and w.seen and all(v == live["version"] and c == live["color"] for _s, v, c in w.seen)
    st = run_cli("--json", "deploy", "status", config=cfg).json
    idle = "green" if live["color"] == "blue" else "blue"
    assert st["active"] == live["color"]
    assert st["colors"][idle]["status"] == "failed"
    assert st["colors"][idle]["services"]["api"]["state"] in ("STOPPED", "EXITED", "FATAL", "BACKOFF")
    assert st["lock"]["held"] is False


def test_invalid_env_stops_the_deploy_before_anything_boots(env):
    cfg = env["cfg"]
    stack = open_stack(load_config(cfg))
    api_env = stack.layout.env_file("api")
    original = api_env.read_text()
    try:
        api_env.write_text(re.sub(r"^JWT_SECRET=.*$", "JWT_SECRET=short", original, flags=re.M))
        r = run_cli("deploy", "--version", "3.0.0-badenv", config=cfg)
        assert r.code == 3, r.output
        assert "JWT_SECRET" in r.stderr and "at least 32" in r.stderr
        assert "short" not in r.stderr.replace("shorter", "")
    finally:
        api_env.write_text(original)
        os.chmod(api_env, 0o600)


def test_concurrent_deploys_are_serialised_by_the_lock(env):
    cfg = env["cfg"]
    lock = DeployLock(open_stack(load_config(cfg)).layout.deploy_dir)
    lock.acquire(1, {"action": "deploy", "version": "held-by-test"})
    try:
        blocked = run_cli("deploy", "--version", "4.0.0", config=cfg,
                          env={"AIXSSS_OPS_DEPLOY__LOCK_TIMEOUT": "1"})
        assert blocked.code == 1 and "holds the lock" in blocked.stderr and "held-by-test" in blocked.stderr
        assert run_cli("--json", "deploy", "lock", "status", config=cfg).json["held"] is True
    finally:
        lock.release()

    procs = [subprocess.Popen([EXE, "--config", str(cfg), "--json", "deploy", "--version", v], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in ("5.0.0", "5.1.0")]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-800:] for o in outs]
    hist = [h for h in run_cli("--json", "deploy", "releases", config=cfg).json if h["version"] in ("5.0.0", "5.1.0")]
    assert len(hist) == 2 and all(h["outcome"] == "live" for h in hist)
    assert hist[0]["color"] != hist[1]["color"]  # the second deployed onto the color the first had left idle
    assert health(env["url"])["version"] == hist[1]["version"]


def test_jobs_enqueued_during_the_switch_complete_exactly_once(env):
    cfg, url = env["cfg"], env["url"]
    stack = open_stack(load_config(cfg))
    with httpx.Client(base_url=url, timeout=10) as c:
        profile = c.post("/api/ai-profiles", json={"name": "during-switch", "provider": "openai_compatible",
                                                   "apiKey": "sk-during-switch"}).json()["id"]
        ids: list[str] = []
        stop = threading.Event()

        def produce():
            while not stop.is_set():
                r = c.post("/api/ai-jobs", json={"type": "llm_chat", "profileId": profile, "input": {"n": len(ids)}})
                assert r.status_code in (200, 201), r.text
                ids.append(r.json()["id"])
                time.sleep(0.05)

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        r = run_cli("deploy", "--version", "6.0.0", config=cfg, timeout=180)
        time.sleep(0.5)
        stop.set()
        t.join(10)
        assert r.code == 0, r.output
        deadline = time.monotonic() + 60
        statuses = {}
        while time.monotonic() < deadline:
            statuses = {i: c.get(f"/api/ai-jobs/{i}").json()["status"] for i in ids}
            if all(s == "succeeded" for s in statuses.values()):
                break
            time.sleep(0.5)
    assert len(ids) >= 5
    assert all(s == "succeeded" for s in statuses.values()), {i: s for i, s in statuses.items() if s != "succeeded"}
    logs = "".join(stack.sup.logfile(f"worker-{c}").read_text() for c in ("blue", "green"))
    for i in ids:
        assert len(re.findall(rf"job {i} \S+ succeeded", logs)) == 1, i


def test_sigkill_during_deploy_leaves_the_live_color_serving_and_nothing_unchecked_running(env):
    cfg, url = env["cfg"], env["url"]
    live = health(url)
    src = broken_copy(env["root"], "slow", "import time\ntime.sleep(30)")
    p = subprocess.Popen([EXE, "--config", str(cfg), "deploy", "--source", str(src), "--version", "7.0.0-slow"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stack = open_stack(load_config(cfg))
    idle = "green" if live["color"] == "blue" else "blue"
    deadline = time.monotonic() + 60

    def booting() -> bool:
        state = stack.deploy_state.load()
        spec = state.spec(idle) if state else None
        return bool(spec) and spec.status == "booting" and spec.release.startswith("7.0.0-slow")

    while not (booting() and stack.unit_state(f"api-{idle}") == "RUNNING") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert booting()
    time.sleep(1.0)  # well inside the health gate: the unchecked release's worker takes no job
    assert stack.unit_state(f"worker-{idle}") in ("STOPPED", "EXITED")
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    now = health(url)
    assert (now["version"], now["color"]) == (live["version"], live["color"])
    # doctor reports the dead deploy without touching anything
    doc = run_cli("--json", "doctor", "--only", "deploy", config=cfg)
    assert doc.code == 3, doc.output
    found = {f["check"]: f for f in doc.json["findings"]}
    assert found["deploy.interrupted"]["status"] == "fail" and idle in found["deploy.interrupted"]["message"]
    assert stack.unit_state(f"api-{idle}") == "RUNNING"
    # the next command that touches the deploy tears the unchecked color down
    st = run_cli("--json", "deploy", "status", config=cfg).json
    assert st["recovered"] and "7.0.0-slow" in st["recovered"]
    assert st["active"] == live["color"] and st["proxy_target"] == live["color"]
    assert st["colors"][idle]["status"] == "failed"
    assert {s["state"] for s in st["colors"][idle]["services"].values()} <= {"STOPPED", "EXITED"}
    assert st["lock"]["held"] is False and st["lock"]["stale_note"] is False
    assert run_cli("--json", "deploy", "releases", config=cfg).json[-1]["outcome"] == "interrupted"
    assert run_cli("--json", "deploy", "status", config=cfg).json["recovered"] is None  # done once
    again = run_cli("--json", "deploy", "--version", "8.0.0", config=cfg, timeout=180)
    assert again.code == 0, again.output
    assert health(url)["version"] == "8.0.0" and json.loads(again.stdout)["color"] == idle


def test_deploy_takes_a_pre_deploy_backup_and_records_it(env):
    cfg = env["cfg"]
    r = run_cli("--json", "deploy", "--version", "9.1.0", config=cfg, env={"AIXSSS_OPS_DEPLOY__BACKUP": "true"},
                timeout=240)
    assert r.code == 0, r.output
    backup_id = r.json["backup_id"]
    assert backup_id
    listed = run_cli("--json", "backup", "list", config=cfg).json["backups"]
    entry = next(b for b in listed if b["id"] == backup_id)
    assert entry["status"] == "complete" and entry["label"].startswith("pre-deploy 9.1.0-")
    assert run_cli("--json", "deploy", "releases", config=cfg).json[-1]["backup_id"] == backup_id


def test_a_deploy_refused_by_its_migrations_takes_no_backup(env):
    cfg, url = env["cfg"], env["url"]
    before = health(url)["version"]
    src = env["root"] / "drops-a-column"
    if not src.exists():
        shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
        m = src / "migrations" / "29990101000000_drop_audit_action"
        m.mkdir()
        (m / "migration.sql").write_text('ALTER TABLE "AuditLog" DROP COLUMN "action";\n')
    backups = len(run_cli("--json", "backup", "list", config=cfg).json["backups"])
    r = run_cli("--json", "deploy", "--source", str(src), "--version", "10.9.0", config=cfg,
                env={"AIXSSS_OPS_DEPLOY__BACKUP": "true"}, timeout=240)
    assert r.code == 3, r.output
    assert "29990101000000_drop_audit_action" in r.json["error"]
    assert len(run_cli("--json", "backup", "list", config=cfg).json["backups"]) == backups  # refused before the backup
    assert health(url)["version"] == before


def test_rollback_offers_and_restores_the_pre_deploy_database(env):
    cfg, url = env["cfg"], env["url"]
    before = health(url)["version"]
    src = env["root"] / "with-migration"
    if not src.exists():
        shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
        m = src / "migrations" / "29990101000000_add_notes"
        m.mkdir()
        (m / "migration.sql").write_text('CREATE TABLE "ReleaseNote" (id TEXT PRIMARY KEY, body TEXT NOT NULL);\n')
    r = run_cli("--json", "deploy", "--source", str(src), "--version", "10.0.0", config=cfg,
                env={"AIXSSS_OPS_DEPLOY__BACKUP": "true"}, timeout=240)
    assert r.code == 0, r.output
    assert r.json["migrations_applied"] == ["29990101000000_add_notes"]
    backup_id = r.json["backup_id"]
    stack = open_stack(load_config(cfg))
    with stack_db(stack) as conn:
        conn.execute("""INSERT INTO "ReleaseNote" VALUES ('n1', 'written by 10.0.0')""")

    refused = run_cli("rollback", "--restore-db", backup_id, config=cfg)
    assert refused.code == 2 and health(url)["version"] == "10.0.0"  # no TTY, no --yes: nothing done

    rb = run_cli("--json", "--yes", "rollback", "--restore-db", backup_id, config=cfg, timeout=240)
    assert rb.code == 0, rb.output
    assert any(f"--restore-db {backup_id}" in w for w in rb.json["warnings"])
    assert rb.json["backup_id"] == backup_id
    assert health(url)["version"] == before
    with stack_db(stack) as conn:
        assert conn.execute("SELECT to_regclass('\"ReleaseNote\"')").fetchone()[0] is None
    smoke = run_cli("--json", "stack", "smoke", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output  # the app works again on the restored database


def stack_db(stack):
    from aixsss_ops.dburl import parse_database_url

    return parse_database_url(stack.app_database_url()).connect()
