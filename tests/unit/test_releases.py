"""Releases and symbolic links in the app source: a link leading out of the tree is refused (its target, e.g. the
state directory's env files, would become part of the release); a link inside the tree stays a link."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from aixsss_ops import releases
from aixsss_ops.errors import UsageError

REPO = Path(__file__).resolve().parents[2]
SECRET = "API_KEY_ENCRYPTION_KEY=c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1sZWF2ZQ\n"


@pytest.fixture
def source(tmp_path) -> Path:
    """A copy of the bundled app beside a state directory holding an env file with a secret."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "app", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = tmp_path / ".aixsss" / "env"
    env.mkdir(parents=True)
    (env / "api.env").write_text(SECRET)
    return src


def _all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("how", ["relative", "absolute", "via-folder-link"])
def test_a_link_out_of_the_source_is_refused_naming_it(source, tmp_path, how):
    secret = tmp_path / ".aixsss" / "env" / "api.env"
    if how == "relative":
        (source / "web" / "leak.txt").symlink_to("../../.aixsss/env/api.env")
        name = "web/leak.txt"
    elif how == "absolute":
        (source / "web" / "leak.txt").symlink_to(secret)
        name = "web/leak.txt"
    else:  # a folder link out of the tree: its files are not the source's either
        (source / "web" / "conf").symlink_to(secret.parent, target_is_directory=True)
        name = "web/conf"
    out = tmp_path / "releases"
    with pytest.raises(UsageError, match=rf"^{name} in the app source .* symbolic link .*outside the source") as e:
        releases.build(source, "1.0.0", out)
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match=name):
        releases.build(source, "1.0.0", out, dry_run=True)
    assert not out.exists() or list(out.iterdir()) == []  # nothing built, no temporary copy left
    # a link inside the tree that leads out through another link is refused as well
    if how == "via-folder-link":
        (source / "web" / "conf").unlink()
        (source / "web" / "conf").symlink_to(secret.parent, target_is_directory=True)
        (source / "api" / "env.txt").symlink_to("../web/conf/api.env")
        with pytest.raises(UsageError, match="api/env.txt|web/conf"):
            releases.build(source, "1.0.0", out)


def test_links_inside_the_source_stay_links_to_the_release_copy(source, tmp_path):
    (source / "web" / "alias.html").symlink_to("index.html")
    (source / "web" / "abs.html").symlink_to(source / "web" / "index.html")  # absolute, but inside the tree
    (source / "web" / "shared").symlink_to("../common", target_is_directory=True)
    (source / "web" / "dangling").symlink_to("not-there-yet.js")
    release, created = releases.build(source, "1.0.0", tmp_path / "releases")
    assert created
    web = release.path / "web"
    assert os.readlink(web / "alias.html") == "index.html"
    assert os.readlink(web / "abs.html") == "index.html"  # made relative: it points into the release, not the source
    assert os.readlink(web / "shared") == "../common"
    assert os.readlink(web / "dangling") == "not-there-yet.js"
    assert (web / "abs.html").read_text() == (source / "web" / "index.html").read_text()
    assert (web / "shared").resolve() == (release.path / "common").resolve()
    assert SECRET.encode() not in _all_bytes(release.path)
    # the content hash covers the links: same tree, same release; another target, another release
    again, created = releases.build(source, "1.0.0", tmp_path / "releases")
    assert again.id == release.id and not created
    (source / "web" / "alias.html").unlink()
    (source / "web" / "alias.html").symlink_to("health.js")
    assert releases.digest(source) != release.digest


def _steps(*argvs, **kw):
    from aixsss_ops.config import BuildStep

    return [BuildStep(run=list(a), **kw) for a in argvs]


def test_build_steps_run_in_the_release_once_per_content(tmp_path):
    source = tmp_path / "src"
    (source / "apps" / "api").mkdir(parents=True)
    (source / "apps" / "api" / "main.src").write_text("hello")
    counter = tmp_path / "builds"
    steps = _steps(["sh", "-c", f"mkdir -p dist && cp main.src dist/main.js && echo x >> {counter}"], cwd="apps/api")
    out = tmp_path / "releases"
    release, created = releases.build(source, "2.0.0", out, steps=steps)
    assert created and (release.path / "apps" / "api" / "dist" / "main.js").read_text() == "hello"
    assert not (release.path / releases.BUILDING).exists()
    again, created = releases.build(source, "2.0.0", out, steps=steps)
    assert (again.id, created) == (release.id, False) and counter.read_text() == "x\n"  # nothing built again
    other, _ = releases.build(source, "2.0.0", out, steps=_steps(["true"]))
    assert other.id != release.id  # the same source built another way is another release


def test_a_failed_build_step_shows_its_last_lines_and_leaves_no_release(tmp_path, monkeypatch):
    from aixsss_ops.releases import BuildFailed

    monkeypatch.setenv("API_KEY_ENCRYPTION_KEY", "k" * 40)
    source = tmp_path / "src"
    source.mkdir()
    (source / "x.txt").write_text("x")
    steps = _steps(["sh", "-c", 'env | grep -c API_KEY_ENCRYPTION_KEY; echo "tsc: error TS2322" >&2; exit 3'])
    with pytest.raises(BuildFailed, match=r"build step 1/1 \(sh -c .*\) exited 3; nothing live was touched") as e:
        releases.build(source, "3.0.0", tmp_path / "releases", steps=steps)
    assert "tsc: error TS2322" in e.value.details and e.value.exit_code == 1
    assert "\n0\n" in "\n" + e.value.details + "\n"  # no secret of this process reached the build
    assert [p.name for p in (tmp_path / "releases").iterdir() if not p.name.endswith(".lock")] == []
    slow = _steps(["sleep", "5"], timeout=0.5)
    with pytest.raises(BuildFailed, match="did not finish within 0.5s"):
        releases.build(source, "3.0.1", tmp_path / "releases", steps=slow)


def test_a_release_left_half_built_by_a_killed_build_is_built_again(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "x.txt").write_text("x")
    steps = _steps(["sh", "-c", "echo built > out.txt"])
    rid = releases.build(source, "4.0.0", tmp_path / "releases", dry_run=True, steps=steps)[0]
    rid.path.mkdir(parents=True)
    (rid.path / releases.BUILDING).write_text("12345\n")  # what a SIGKILLed build leaves
    release, created = releases.build(source, "4.0.0", tmp_path / "releases", steps=steps)
    assert created and (release.path / "out.txt").read_text() == "built\n"
