"""A Node app described in ops.toml (tests/fixtures/nodeapp: npm workspace, TCP-only api with a liveness health,
BullMQ worker with a ready log line, static web build) run by the same commands as the bundled app, on the local
runtime: build steps in the release (cached per release id), stack up, smoke, deploy under load, a failing build,
an api that crashes, a worker that never gets ready, the release playbook, rollback, key rotation's blue/green
restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from aixsss_ops import envfile
from aixsss_ops.config import load_config
from aixsss_ops.stack.engines import open_stack
from tests.cli import run_cli
from tests.conftest import node_app_copy, node_app_toml, stack_config, state_tmpdir

pytestmark = pytest.mark.slow


def variant(root: Path, name: str, patch: dict[str, str] | None = None) -> Path:
    return node_app_copy(root, name, patch)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = state_tmpdir("aixsss-node-")
    src = variant(root, "src")
    cfg = stack_config(root, app_toml=node_app_toml(src), deploy={"health_timeout": 25, "warm_minutes": 30})
    r = run_cli("--json", "stack", "up", config=cfg, timeout=600)
    assert r.code == 0, r.output
    url = r.json["url"]
    yield {"cfg": cfg, "root": root, "src": src, "url": url, "up": r.json}
    run_cli("stack", "down", config=cfg, timeout=180)


def version(url: str) -> dict:
    return httpx.get(url + "/api/version", timeout=5).json()


def test_stack_up_builds_and_runs_the_described_app(node):
    units = {s["unit"]: s for s in node["up"]["services"]}
    assert {"api-blue", "worker-blue"} <= set(units)
    assert all(s["healthy"] for s in units.values()), units
    assert "logged '[worker] ready" in units["worker-blue"]["detail"]
    assert any(a.startswith("applied migration 000_init") for a in node["up"]["actions"])
    assert version(node["url"]) == {"version": "1.0.0", "color": "blue"}
    page = httpx.get(node["url"] + "/some/client/route", timeout=5)  # client-side routes get index.html
    assert page.status_code == 200 and "<html" in page.text.lower()
    state = load_config(node["cfg"]).state
    release = next((state / "releases").glob("1.0.0-*"))
    assert (release / "apps" / "api" / "dist" / "main.js").is_file() and (release / "node_modules").is_dir()
    # the api listens on TCP only: the proxy reaches it through nginx's own socket for the color
    assert not (state / "run" / "api-blue.sock").exists() and (state / "run" / "proxy-blue.sock").exists()


def test_doctor_shows_that_the_api_listens_on_every_interface(node):
    r = run_cli("--json", "doctor", "--only", "deploy.api-bind", config=node["cfg"])
    f = r.json["findings"][0]
    assert f["status"] == "warn" and "0.0.0.0:" in f["message"] and "iptables" in f["fix"]


def test_smoke_checks_what_the_app_offers_and_says_what_it_could_not(node):
    r = run_cli("--json", "stack", "smoke", config=node["cfg"], timeout=120)
    assert r.code == 0, r.output
    assert r.json["job_status"] == "succeeded"
    assert any(s.startswith("worker-blue ready") for s in r.json["steps"])
    assert any("/api/ready" in n for n in r.json["notes"])


def keep_loading(url: str, failures: list, ok: list, stop: threading.Event) -> None:
    """GET /api/health over one keep-alive connection until ``stop``: ``ok[0]`` counts the 200s, ``failures``
    gets every other status and every error."""
    with httpx.Client(base_url=url, timeout=5) as c:
        while not stop.is_set():
            try:
                r = c.get("/api/health")
                if r.status_code == 200:
                    ok[0] += 1
                else:
                    failures.append(r.status_code)
            except httpx.HTTPError as e:
                failures.append(repr(e))


def run_job(url: str, profile_id: str, timeout: float = 30) -> dict:
    """Enqueue an llm_chat job through the api and return its row once it finished (or when ``timeout`` ran out)."""
    with httpx.Client(base_url=url, timeout=10) as c:
        j = c.post("/api/ai-jobs", json={"type": "llm_chat", "profileId": profile_id, "input": {}})
        assert j.status_code in (200, 201), j.text
        deadline = time.monotonic() + timeout
        while True:
            row = c.get(f"/api/ai-jobs/{j.json()['id']}").json()
            if row["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return row
            time.sleep(0.2)


def test_deploy_under_load_then_the_same_content_builds_nothing(node):
    cfg, url = node["cfg"], node["url"]
    failures, ok = [], [0]
    stop = threading.Event()
    t = threading.Thread(target=keep_loading, args=(url, failures, ok, stop))
    t.start()
    try:
        r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=600)
    finally:
        stop.set()
        t.join(10)
    assert r.code == 0, r.output
    assert failures == [] and ok[0] > 50
    assert version(url) == {"version": "2.0.0", "color": "green"}
    assert r.json["color"] == "green"
    again = run_cli("--json", "--yes", "deploy", "--version", "2.0.0", "--force", config=cfg, timeout=600)
    assert again.code == 0, again.output
    assert "build " not in again.stderr  # the release exists: no build step ran
    assert version(url) == {"version": "2.0.0", "color": "blue"}


def test_a_failing_build_touches_nothing_live(node):
    cfg, url = node["cfg"], node["url"]
    before = version(url)
    r = run_cli("deploy", "--version", "9.0.0", config=cfg, env={"FIXTURE_BUILD_FAIL": "1"}, timeout=600)
    assert r.code == 1, r.output
    assert "build step 2/2 (npm run build) exited 1; nothing live was touched" in r.stderr
    assert "build failed on purpose" in r.stderr  # the step's last lines
    assert version(url) == before
    state = load_config(cfg).state
    assert not list((state / "releases").glob("9.0.0-*"))


def test_an_api_that_crashes_fails_the_deploy_with_its_log(node):
    cfg, url = node["cfg"], node["url"]
    before = version(url)
    src = variant(node["root"], "crashing", {"apps/api/src/main.js": "process.env.FIXTURE_API_CRASH = '1';\n"})
    r = run_cli("deploy", "--source", str(src), "--version", "9.1.0", config=cfg, timeout=600)
    assert r.code == 1, r.output
    assert "did not pass the health gate" in r.stderr and "crashing on purpose" in r.stderr
    assert version(url) == before


def test_a_worker_that_never_gets_ready_fails_the_deploy_with_its_log(node):
    cfg, url = node["cfg"], node["url"]
    before = version(url)
    src = variant(node["root"], "never-ready",
                  {"apps/worker/src/worker.js": "process.env.FIXTURE_WORKER_NEVER_READY = '1';\n"})
    r = run_cli("deploy", "--source", str(src), "--version", "9.2.0", config=cfg, timeout=600)
    assert r.code == 1, r.output
    assert "was not ready within" in r.stderr and "no log line matches" in r.stderr
    assert "last lines of worker-" in r.stderr
    assert version(url) == before
    stack = open_stack(load_config(cfg))
    idle = "green" if before["color"] == "blue" else "blue"
    assert stack.unit_state(f"worker-{idle}") in ("STOPPED", "EXITED")


def test_the_release_playbook_releases_the_node_app(node):
    cfg, url = node["cfg"], node["url"]
    r = run_cli("--json", "--yes", "play", "release", "--var", "version=3.0.0", config=cfg, timeout=900)
    assert r.code == 0, r.output
    assert version(url)["version"] == "3.0.0"
    assert r.json["status"] == "succeeded"


def test_rollback_does_not_wait_for_the_old_worker_to_drain(node):
    """The previous color serves at once; the worker of the color rolled back from finishes its job on its own."""
    cfg, url = node["cfg"], node["url"]
    live = version(url)
    with httpx.Client(base_url=url, timeout=10) as c:
        p = c.post("/api/ai-profiles", json={"name": "drain", "provider": "openai_compatible", "apiKey": "sk-d-1"})
        j = c.post("/api/ai-jobs", json={"type": "llm_chat", "profileId": p.json()["id"], "input": {"ms": 8000}})
        assert j.status_code in (200, 201), j.text
        job = j.json()["id"]
        deadline = time.monotonic() + 20
        while c.get(f"/api/ai-jobs/{job}").json()["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        rb = run_cli("--json", "rollback", config=cfg, timeout=120)
        took = time.monotonic() - t0
        assert rb.code == 0, rb.output
        assert version(url)["color"] != live["color"]
        assert c.get(f"/api/ai-jobs/{job}").json()["status"] == "running"  # still draining when rollback returned
        assert took < 6 and f"draining worker-{live['color']}" in rb.stderr
        deadline = time.monotonic() + 30
        while c.get(f"/api/ai-jobs/{job}").json()["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get(f"/api/ai-jobs/{job}").json()["status"] == "succeeded"
    stack = open_stack(load_config(cfg))
    assert poll(lambda: stack.unit_state(f"worker-{live['color']}") == "STOPPED", 20)


def poll(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_rollback_and_key_rotation_restart(node):
    cfg, url = node["cfg"], node["url"]
    live = version(url)
    state = load_config(cfg).state
    first = next((state / "releases").glob("1.0.0-*")).name  # stack up's release: its color is cold by now
    rb = run_cli("--json", "--yes", "rollback", "--to", first, config=cfg, timeout=300)
    assert rb.code == 0, rb.output
    back = version(url)
    assert back["color"] != live["color"] and back["version"] == "1.0.0"
    # a provider key stored through the app, then the key rotated: the app restarts blue/green on the new key
    with httpx.Client(base_url=url, timeout=10) as c:
        p = c.post("/api/ai-profiles", json={"name": "k", "provider": "openai_compatible", "apiKey": "sk-x-123"})
        assert p.status_code in (200, 201), p.text
    old = envfile.read(state / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"]
    rot = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=600)
    assert rot.code == 0, rot.output
    assert envfile.read(state / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"] != old
    check = run_cli("--json", "keys", "check", config=cfg, timeout=120)
    assert check.code == 0 and check.json["values"] >= 1, check.output
    row = run_job(url, p.json()["id"])
    assert row["status"] == "succeeded", row  # the restarted worker decrypts with the new key


def test_a_worker_role_of_count_two_runs_two_processes_then_one_again(node):
    """count = 2 (here laid over ops.toml by its env variable): the new color runs worker and worker.2, each through
    its own readiness; back to count = 1, the color that ran two is drained of both, and booted again it has no
    worker.2 left."""
    cfg, url = node["cfg"], node["url"]
    stack = open_stack(load_config(cfg))
    two = run_cli("--json", "--yes", "deploy", "--force", config=cfg, timeout=600,
                  env={"AIXSSS_OPS_APP__PROCESSES__WORKER__COUNT": "2"})
    assert two.code == 0, two.output
    c2 = two.json["color"]
    assert f"worker-{c2} is ready" in two.stderr and f"worker.2-{c2} is ready" in two.stderr
    # ready by their log lines; RUNNING once supervisord's start check (their first second) has passed too
    assert poll(lambda: stack.unit_state(f"worker-{c2}") == stack.unit_state(f"worker.2-{c2}") == "RUNNING", 10)
    log = (load_config(cfg).state / "logs" / f"worker.2-{c2}.log").read_text()
    assert "[worker] ready" in log  # a process of its own, with its own log
    one = run_cli("--json", "--yes", "deploy", "--force", config=cfg, timeout=600)
    assert one.code == 0, one.output
    c1 = one.json["color"]
    assert c1 != c2 and version(url)["color"] == c1
    assert stack.unit_state(f"worker-{c2}") == stack.unit_state(f"worker.2-{c2}") == "STOPPED"  # both drained
    assert stack.unit_state(f"worker.2-{c1}") == "ABSENT"
    again = run_cli("--json", "--yes", "deploy", "--force", config=cfg, timeout=600)  # c2 booted with count 1
    assert again.code == 0 and again.json["color"] == c2, again.output
    assert stack.unit_state(f"worker.2-{c2}") == "ABSENT"
    assert poll(lambda: stack.unit_state(f"worker-{c2}") == "RUNNING", 10)
