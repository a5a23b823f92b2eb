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
