"""ops.toml's ``app.queue`` and the services' env files on a real local stack: ``env validate`` and doctor flag a
difference, ``deploy`` writes ops.toml's queue into the env files (put back when the deploy fails before its switch),
the new release's api and worker use it; ``stack smoke`` says so when the queue is paused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.context.layout import Layout
from tests.cli import REPO, run_cli
from tests.conftest import stack_config, state_tmpdir

DEPLOY = {"health_interval": 0.2, "health_threshold": 3, "health_timeout": 8.0, "lock_timeout": 60.0, "backup": False}
NEW = "jobs-renamed"


@pytest.fixture(scope="module")
def env():
    root = state_tmpdir("aixsss-queuename-")
    cfg = stack_config(root, deploy=DEPLOY)
    r = run_cli("stack", "up", config=cfg, timeout=240)
    try:
        assert r.code == 0, r.output
        yield {"cfg": cfg, "root": root, "layout": Layout(load_config(cfg).state)}
    finally:
        run_cli("stack", "down", config=cfg, timeout=180)


def _queues(layout: Layout) -> dict[str, str | None]:
    return {svc: envfile.read(layout.env_file(svc)).get("AI_QUEUE_NAME") for svc in ("api", "worker")}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(v.decode(errors="replace").partition("=")[::2] for v in raw if v)


def test_a_changed_app_queue_is_flagged_then_deployed(env):
    cfg, layout = env["cfg"], env["layout"]
    assert _queues(layout) == {"api": "ai-jobs", "worker": "ai-jobs"}
    cfg.write_text(cfg.read_text() + f'queue = "{NEW}"\n')  # the [app] table is the file's last
    assert load_config(cfg).app.queue == NEW

    v = run_cli("--json", "env", "validate", config=cfg)
    flagged = [f for f in v.json["findings"] if f["check"] == "env.queue"]
    assert {f["service"] for f in flagged} == {"api", "worker"}, v.output
    assert all(f["status"] == "warn" and "'ai-jobs'" in f["message"] and f"'{NEW}'" in f["message"] for f in flagged)
    doc = run_cli("--json", "doctor", "--only", "env", config=cfg)
    assert any(f["check"] == "env.queue" and f"'{NEW}'" in f["message"] for f in doc.json["findings"]), doc.output

    # a deploy that fails its health gate leaves the env files as the live color runs with them
    src = env["root"] / "crashing"
    shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__"))
    main = src / "api" / "__main__.py"
    main.write_text("raise SystemExit('boom: this release cannot start')\n" + main.read_text())
    bad = run_cli("deploy", "--source", str(src), "--version", "9.9.9-crash", config=cfg, timeout=180)
    assert bad.code == 1 and "boom" in bad.stderr, bad.output
    assert _queues(layout) == {"api": "ai-jobs", "worker": "ai-jobs"}

    plan = run_cli("--json", "deploy", "--version", "2.0.0-queue", "--dry-run", config=cfg, timeout=180)
    assert plan.code == 0 and any("'ai-jobs' -> 'jobs-renamed'" in p for p in plan.json["plan"]), plan.output
    assert _queues(layout) == {"api": "ai-jobs", "worker": "ai-jobs"}

    r = run_cli("--json", "deploy", "--version", "2.0.0-queue", config=cfg, timeout=180)
    assert r.code == 0, r.output
    assert any("'ai-jobs' -> 'jobs-renamed'" in w for w in r.json["warnings"]), r.json["warnings"]
    assert _queues(layout) == {"api": NEW, "worker": NEW}
    st = run_cli("--json", "deploy", "status", config=cfg).json
    live = st["active"]
    pids = {s["unit"]: s["pid"] for s in run_cli("--json", "stack", "status", config=cfg).json["services"]
            if s.get("pid")}
    for role in ("api", "worker"):
        assert _environ(pids[f"{role}-{live}"])["AI_QUEUE_NAME"] == NEW

    smoke = run_cli("--json", "stack", "smoke", "--timeout", "60", config=cfg, timeout=120)
    assert smoke.code == 0, smoke.output
    stats = run_cli("--json", "queue", "stats", config=cfg)
    assert stats.json["queue"] == NEW and stats.json["counts"]["completed"] >= 1, stats.output
    again = run_cli("--json", "env", "validate", config=cfg)
    assert not [f for f in again.json["findings"] if f["check"] == "env.queue"], again.output


def test_smoke_on_a_paused_queue_says_it_is_paused(env):
    cfg = env["cfg"]
    paused = run_cli("--json", "queue", "pause", config=cfg)
    assert paused.code == 0, paused.output
    try:
        r = run_cli("stack", "smoke", "--timeout", "3", config=cfg, timeout=120)
        assert r.code == 3, r.output
        assert "is paused" in r.stderr and "aixsss-ops queue resume" in r.stderr, r.stderr
        assert "is a worker running" not in r.stderr
    finally:
        assert run_cli("queue", "resume", config=cfg).code == 0
    r = run_cli("--json", "stack", "smoke", config=cfg, timeout=120)
    assert r.code == 0, r.output
    assert json.loads(r.stdout)["job_status"] == "succeeded"
