"""Releases: immutable copies of the app source under the state directory, id = version + content hash."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aixsss_ops.errors import UsageError

_SKIP_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "node_modules", ".git"}
_SKIP_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Release:
    id: str
    version: str
    digest: str
    path: Path

    def to_dict(self) -> dict:
        return {"id": self.id, "version": self.version, "digest": self.digest, "path": str(self.path)}


def _files(source: Path) -> list[Path]:
    """Regular files and symbolic links (to files or folders; never followed) under ``source``, in a stable order."""
    out = []
    for root, dirs, files in os.walk(source):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d)) and d not in _SKIP_DIRS]
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and d not in links)
        out += [Path(root) / f for f in sorted(files + links) if not f.endswith(_SKIP_SUFFIXES)]
    return out


def _link_target(source: Path, link: Path) -> str:
    """What the release's copy of ``link`` points to: the same file or folder of the tree, as a relative path.

    A link leading out of the source (``web/leak.txt -> ../../.aixsss/env/api.env``) is refused: copying what it
    points to would put a file from elsewhere (secrets) into the release. Raises UsageError naming the link."""
    root = Path(os.path.realpath(source))
    target = Path(os.path.realpath(link))
    if target != root and root not in target.parents:
        rel = link.relative_to(source).as_posix()
        raise UsageError(
            f"{rel} in the app source {source} is a symbolic link to {os.readlink(link)}, outside the source tree: "
            "a release holds the source tree only",
            hint=f"remove {rel}, or replace it with a copy of what it should contain",
        )
    return os.path.relpath(target, os.path.realpath(link.parent))


def _tree(source: Path) -> list[tuple[Path, str | None]]:
    """(path, link target) of everything a release holds; the target is None for a regular file."""
    return [(f, _link_target(source, f) if f.is_symlink() else None) for f in _files(source)]


def digest(source: Path) -> str:
    h = hashlib.sha256()
    for f, link in _tree(source):
        rel = f.relative_to(source).as_posix()
        if link is not None:
            h.update(rel.encode() + b"\0symlink\0" + link.encode() + b"\0")
            continue
        h.update(rel.encode() + b"\0" + oct(f.stat().st_mode & 0o111).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def build(source: Path, version: str, releases_dir: Path, dry_run: bool = False) -> tuple[Release, bool]:
    """Copy ``source`` into ``releases_dir/<version>-<hash12>`` unless that release exists; (release, created).

    With ``dry_run`` only the id is computed and nothing is written."""
    if not (source / "api").is_dir() or not (source / "worker").is_dir():
        raise UsageError(f"{source} is not an AIXSSS app source (no api/ and worker/ folders)")
    if not version or "/" in version or version.startswith("."):
        raise UsageError(f"invalid version {version!r}")
    d = digest(source)
    rid = f"{version}-{d[:12]}"
    path = releases_dir / rid
    if path.exists() or dry_run:
        return Release(rid, version, d, path), False
    releases_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rid}.", dir=releases_dir))
    try:
        for f, link in _tree(source):
            dest = tmp / f.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if link is not None:  # kept a link (to the release's own copy), never followed
                os.symlink(link, dest)
            else:
                shutil.copy2(f, dest)
        for f in _files(tmp):
            if not f.is_symlink():
                f.chmod(f.stat().st_mode & ~0o222)
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Release(rid, version, d, path), True


def find(releases_dir: Path, release_id: str) -> Release:
    path = releases_dir / release_id
    if not path.is_dir():
        raise UsageError(f"unknown release {release_id!r} (see 'aixsss-ops deploy releases')")
    version, _, short = release_id.rpartition("-")
    return Release(release_id, version, short, path)
