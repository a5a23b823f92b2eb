"""A non-editable install of aixsss-ops (what `pip install aixsss-ops` or `pipx install` makes: no checkout beside
the package, no test extras) builds the runtime image: the project's wheel is made again from the installed files,
and the image holds that same aixsss-ops."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.cli import REPO
from tests.conftest import stack_config, state_tmpdir
from tests.integration.docker.conftest import SOCK


def _run(argv: list, timeout: float = 900, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{argv[:4]}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _contents(wheel: Path) -> dict[str, bytes]:
    """A wheel's files and their bytes, less RECORD (its lines may come in another order)."""
    with zipfile.ZipFile(wheel) as z:
        return {n: z.read(n) for n in z.namelist() if not n.endswith(".dist-info/RECORD")}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_runtime_image_from_a_non_editable_install(docker_engine):
    import docker

    work = state_tmpdir("aixsss-install-")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", work / "dist", REPO])
    (project_wheel,) = (work / "dist").glob("aixsss_ops-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", venv])
    _run([venv / "bin/python", "-m", "pip", "install", "--quiet", project_wheel])  # no [test] extras
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIXSSS_OPS_", "PYTHON", "VIRTUAL_ENV"))}
    env["NO_COLOR"] = "1"
    where = _run([venv / "bin/python", "-c", "import aixsss_ops; print(aixsss_ops.__file__)"], cwd=work, env=env)
    assert "/site-packages/aixsss_ops/" in where.stdout  # the installed copy, not the checkout

    image = f"aixsss/runtime-install-test:{uuid.uuid4().hex[:8]}"
    cfg = stack_config(work, docker={"runtime_image": image})
    client = docker.DockerClient(base_url=f"unix://{SOCK}", timeout=300)
    try:
        r = _run([venv / "bin/aixsss-ops", "--config", cfg, "--json", "images", "base", "--wheels-dir", work / "wheels"],
                 timeout=3000, cwd=work, env=env)
        doc = json.loads(r.stdout)
        assert doc["runtime"]["image"] == image and doc["runtime"]["built"], doc

        # the wheel it built for the image is the project's own wheel: the same files, byte for byte
        (sent,) = (work / "wheels").glob("aixsss_ops-*.whl")
        assert sent.name == project_wheel.name
        assert _contents(sent) == _contents(project_wheel)

        # the image runs that aixsss-ops, installed from the wheel into its venv
        import aixsss_ops

        out = client.containers.run(image, ["aixsss-ops", "--version"], remove=True, network_mode="none")
        assert out.decode().strip() == f"aixsss-ops {aixsss_ops.__version__}"
        code = "import aixsss_ops, packaging; print(aixsss_ops.__file__)"
        out = client.containers.run(image, ["python3", "-c", code], remove=True, network_mode="none")
        assert out.decode().startswith("/opt/aixsss/lib/")

        # a second run finds the image up to date: the wheel made again has the same bytes
        r = _run([venv / "bin/aixsss-ops", "--config", cfg, "--json", "images", "base"], timeout=1800, cwd=work,
                 env=env)
        assert json.loads(r.stdout)["runtime"]["built"] is False
    finally:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image, force=True)
