"""The Node fixture app (tests/fixtures/nodeapp) on the docker runtime: its build steps run in a build container
(npm from the runtime image, the package cache in a volume), the release's image is that container committed,
the api listens on TCP inside its container and the proxy reaches it by the container's name; stack up, deploy
under load, the same release again (no build), a failing build, an api that crashes, a worker that never gets
ready, rollback, the release playbook and key rotation's blue/green restart."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import httpx
import pytest

from aixsss_ops import envfile, releases
from aixsss_ops.config import load_config
from tests.cli import run_cli
from tests.conftest import node_app_copy, node_app_toml, stack_config, state_tmpdir
from tests.integration.docker.conftest import SOCK, purge
from tests.integration.docker.test_docker_stack import containers
from tests.integration.test_node_app import keep_loading, run_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(docker_images):
    root = state_tmpdir("aixsss-dnode-")
    src = node_app_copy(root, "src")
    project = f"t{uuid.uuid4().hex[:8]}"
    cfg = stack_config(root, app_toml=node_app_toml(src),
                       deploy={"health_timeout": 40, "health_interval": 0.3, "backup": False})
    cfg.write_text(f'project = "{project}"\nruntime = "docker"\n' + cfg.read_text())
    _remove_app_images(load_config(cfg), src)  # a build that really runs, whatever an earlier run left
    r = run_cli("--json", "stack", "up", config=cfg, timeout=900)
    assert r.code == 0, r.output
    yield {"cfg": cfg, "root": root, "project": project, "url": r.json["url"], "up": r.json, "stderr": r.stderr}
    run_cli("stack", "down", config=cfg, timeout=240)
    purge(project)
    _remove_app_images(load_config(cfg), src)


def _client():
    import docker

    return docker.DockerClient(base_url=f"unix://{SOCK}", timeout=120)


def _remove_app_images(cfg, src) -> None:
    """The app images of the fixture's releases (their ids follow from the source, the version and the steps)."""
    import docker

    client = _client()
    for v in ("1.0.0", "2.0.0"):
        release, _ = releases.build(src, v, cfg.state / "releases", dry_run=True, steps=cfg.app.build)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(f"{cfg.docker.app_image}:{release.id}", force=True)


def version(url: str) -> dict:
    return httpx.get(url + "/api/version", timeout=5).json()


def variant(node, name: str, patch: dict[str, str]):
    return node_app_copy(node["root"], name, patch)


def test_stack_up_builds_in_a_container_and_runs_the_described_app(node):
    cfg = load_config(node["cfg"])
    units = {s["unit"]: s for s in node["up"]["services"]}
    assert {"api-blue", "worker-blue"} <= set(units) and all(s["healthy"] for s in units.values()), units
    assert "in a container" in node["stderr"]  # the build steps ran in the build container
    assert version(node["url"]) == {"version": "1.0.0", "color": "blue"}
    page = httpx.get(node["url"] + "/some/client/route", timeout=5)  # the web build, served by the proxy
    assert page.status_code == 200 and "<html" in page.text.lower()
    release = next((cfg.state / "releases").glob("1.0.0-*"))
    # the host holds the source and the web build that came back; the dependencies and the api build are in the image
    assert (release / "apps" / "web" / "dist" / "index.html").is_file()
    assert not (release / "node_modules").exists() and not (release / "apps" / "api" / "dist").exists()
    found = containers(node["project"])
    api = found["api-blue"]
    assert f"{cfg.docker.app_image}:{release.name}" in api.image.tags
    assert api.attrs["Config"]["WorkingDir"] == "/srv/app/apps/api"
    assert api.attrs["Config"]["User"] == "10001:10001"
    assert not any("API_KEY" in e or "DATABASE_URL" in e for e in api.attrs["Config"]["Env"])  # secrets are files
    client = _client()
    assert client.volumes.get(f"{node['project']}-buildcache")  # npm's cache, kept for the next release
    assert not client.containers.list(all=True, filters={"name": f"{node['project']}-build-"})  # the builder is gone
    assert "io.aixsss.project" not in (client.images.get(api.image.id).labels or {})
    # the api listens on TCP only: the proxy forwards to api-blue by name through its own socket for the color
    proxy = found["proxy"]
    out = proxy.exec_run(["readlink", "/run/aixsss/colors/blue/api.sock"]).output.decode().strip()
    assert out == "/run/aixsss/proxy-blue.sock"


def test_deploy_under_load_then_the_same_release_builds_nothing(node):
    cfg, url = node["cfg"], node["url"]
    failures, ok, stop = [], [0], threading.Event()
    threads = [threading.Thread(target=keep_loading, args=(url, failures, ok, stop)) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        r = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=900)
        assert r.code == 0, r.output
        assert version(url) == {"version": "2.0.0", "color": "green"}
        rb = run_cli("--json", "rollback", config=cfg, timeout=120)
        assert rb.code == 0, rb.output
        assert version(url) == {"version": "1.0.0", "color": "blue"}
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == [] and ok[0] > 100, (failures[:5], ok)
    t0 = time.monotonic()
    again = run_cli("--json", "deploy", "--version", "2.0.0", config=cfg, timeout=600)
    assert again.code == 0, again.output
    assert "build " not in again.stderr  # the release and its image exist: no build step ran
    assert version(url) == {"version": "2.0.0", "color": "green"}
    assert time.monotonic() - t0 < 120


def test_a_failing_build_touches_nothing_live(node):
    cfg, url = node["cfg"], node["url"]
    before = version(url)
    src = node_app_copy(node["root"], "failing-build")
    script = src / "scripts" / "build.js"  # the env of the host does not reach the build container: the file says it
    script.write_text(script.read_text().replace("\n", "\nprocess.env.FIXTURE_BUILD_FAIL = '1';\n", 1))
    r = run_cli("deploy", "--source", str(src), "--version", "9.0.0", config=cfg, timeout=900)
    assert r.code == 1, r.output
    assert "build step 2/2 (npm run build) exited 1; nothing live was touched" in r.stderr
    assert "build failed on purpose" in r.stderr  # the step's last lines, from the container
    assert version(url) == before
    state = load_config(cfg).state
    assert not list((state / "releases").glob("9.0.0-*"))
    client = _client()
    assert not [i for i in client.images.list(name=load_config(cfg).docker.app_image) if
                any(":9.0.0-" in t for t in i.tags)]
    assert not client.containers.list(all=True, filters={"name": f"{node['project']}-build-"})


def test_an_api_that_crashes_and_a_worker_never_ready_fail_the_deploy_with_their_logs(node):
    cfg, url = node["cfg"], node["url"]
    before = version(url)
    src = variant(node, "crashing", {"apps/api/src/main.js": "process.env.FIXTURE_API_CRASH = '1';\n"})
    r = run_cli("deploy", "--source", str(src), "--version", "9.1.0", config=cfg, timeout=900)
    assert r.code == 1, r.output
    assert "did not pass the health gate" in r.stderr and "crashing on purpose" in r.stderr
    assert version(url) == before
    src = variant(node, "never-ready", {"apps/worker/src/worker.js": "process.env.FIXTURE_WORKER_NEVER_READY = '1';\n"})
    r = run_cli("deploy", "--source", str(src), "--version", "9.2.0", config=cfg, timeout=900)
    assert r.code == 1, r.output
    assert "was not ready within" in r.stderr and "last lines of worker-" in r.stderr
    assert version(url) == before


def test_the_release_playbook_releases_the_node_app(node):
    r = run_cli("--json", "--yes", "play", "release", "--var", "version=3.0.0", config=node["cfg"], timeout=900)
    assert r.code == 0, r.output
    assert r.json["status"] == "succeeded" and version(node["url"])["version"] == "3.0.0"


def test_a_worker_role_of_count_two_is_two_containers(node):
    cfg = node["cfg"]
    two = run_cli("--json", "--yes", "deploy", "--force", config=cfg, timeout=900,
                  env={"AIXSSS_OPS_APP__PROCESSES__WORKER__COUNT": "2"})
    assert two.code == 0, two.output
    c2 = two.json["color"]
    found = containers(node["project"])
    assert found[f"worker-{c2}"].status == found[f"worker.2-{c2}"].status == "running"
    assert found[f"worker.2-{c2}"].attrs["Config"]["WorkingDir"] == "/srv/app/apps/worker"
    assert f"worker.2-{c2} is ready" in two.stderr
    one = run_cli("--json", "--yes", "deploy", "--force", config=cfg, timeout=900)
    assert one.code == 0 and one.json["color"] != c2, one.output
    found = containers(node["project"])
    assert found[f"worker-{c2}"].status == found[f"worker.2-{c2}"].status == "exited"  # both drained


def test_key_rotation_restarts_the_node_app_blue_green(node):
    cfg, url = node["cfg"], node["url"]
    state = load_config(cfg).state
    with httpx.Client(base_url=url, timeout=10) as c:
        p = c.post("/api/ai-profiles", json={"name": "k", "provider": "openai_compatible", "apiKey": "sk-x-123"})
        assert p.status_code in (200, 201), p.text
    old = envfile.read(state / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"]
    live = version(url)
    rot = run_cli("--json", "--yes", "keys", "rotate", "--generate", config=cfg, timeout=900)
    assert rot.code == 0, rot.output
    assert envfile.read(state / "env" / "api.env")["API_KEY_ENCRYPTION_KEY"] != old
    assert version(url)["color"] != live["color"]  # restarted on the other color
    row = run_job(url, p.json()["id"])
    assert row["status"] == "succeeded", row  # the restarted worker decrypts with the new key
