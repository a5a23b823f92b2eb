"""Releases: immutable copies of the app source under the state directory, built there by the app's build steps
(ops.toml ``app.build``); id = version + hash of the content and the steps."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aixsss_ops.errors import OpsError, UsageError

if TYPE_CHECKING:
    from aixsss_ops.config import BuildStep

BUILDING = ".building"  # in a release while it is copied and built; a release with it is incomplete

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


def digest(source: Path, steps: Sequence[BuildStep] = ()) -> str:
    h = hashlib.sha256()
    if steps:  # the same source built another way is another release
        h.update(json.dumps([st.model_dump() for st in steps], sort_keys=True).encode() + b"\0")
    for f, link in _tree(source):
        rel = f.relative_to(source).as_posix()
        if link is not None:
            h.update(rel.encode() + b"\0symlink\0" + link.encode() + b"\0")
            continue
        h.update(rel.encode() + b"\0" + oct(f.stat().st_mode & 0o111).encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


Say = Callable[[str], None]
# runs the build steps of the copied release (folder, version, progress): on this host (``run_steps``) or in the
# runtime's build container (the docker runtime's ``build_release``)
Builder = Callable[[Path, str, Say], None]


def build(source: Path, version: str, releases_dir: Path, dry_run: bool = False, *,
          steps: Sequence[BuildStep] = (), say: Say | None = None,
          builder: Builder | None = None) -> tuple[Release, bool]:
    """The release of ``source`` (``releases_dir/<version>-<hash12>``): copied, then built by ``steps`` (through
    ``builder``, by default on this host), unless that release exists already; (release, created). The id covers
    the source and the steps, so a second deploy of the same content builds nothing. A failed step removes the
    half-built release and raises BuildFailed with its last lines; nothing else is touched. With ``dry_run`` only
    the id is computed."""
    say = say or (lambda _m: None)
    if not source.is_dir():
        raise UsageError(f"the app source {source} is not a folder")
    check_version(version)
    d = digest(source, steps)
    rid = f"{version}-{d[:12]}"
    path = releases_dir / rid
    if dry_run:
        return Release(rid, version, d, path), False
    releases_dir.mkdir(parents=True, exist_ok=True)
    # one builder of a release at a time: the lock is held until the last program of a build step has died, so the
    # remains of a killed builder (its folder still holds BUILDING) are removed here while nothing writes into them
    with _building(releases_dir, rid):
        if path.exists() and not (path / BUILDING).exists():
            return Release(rid, version, d, path), False
        _discard(path)
        try:
            path.mkdir()
            (path / BUILDING).write_text(f"{os.getpid()}\n")
            for f, link in _tree(source):
                dest = path / f.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if link is not None:  # kept a link (to the release's own copy), never followed
                    os.symlink(link, dest)
                else:
                    shutil.copy2(f, dest)
            if steps:
                (builder or (lambda p, v, s: run_steps(p, v, steps, s)))(path, version, say)
            for f in _files(path):
                if not f.is_symlink():
                    f.chmod(f.stat().st_mode & ~0o222)
            os.chmod(path, 0o755)
            (path / BUILDING).unlink()
        except BaseException:  # a failed step, an interrupt (Ctrl-C, SIGTERM): the half-built release goes
            _discard(path)
            raise
    return Release(rid, version, d, path), True


def _discard(path: Path) -> None:
    """Remove a half-built release: renamed first (a hidden name no reader takes for a release), then deleted."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.discarded-{os.getpid()}")
    try:
        path.rename(trash)
    except OSError:
        trash = path
    shutil.rmtree(trash, ignore_errors=True)


_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_version(version: str) -> None:
    """A release version: 1 to 128 of letters, digits and ``._+-``, not starting with a dot (it names a folder)."""
    if not _VERSION.fullmatch(version or ""):
        shown = version if len(version or "") <= 40 else f"{version[:40]}... ({len(version)} characters)"
        raise UsageError(f"invalid version {shown!r}",
                         hint="a version is 1 to 128 letters, digits and . _ + -, starting with a letter or digit")


def run_steps(release: Path, version: str, steps: Sequence[BuildStep], say: Say) -> None:
    """The build steps, run in ``release`` on this host."""
    for i, step in enumerate(steps, 1):
        say(f"build {release.name} step {i}/{len(steps)}: {shlex.join(step.run)}")
        _run_step(release, step, i, len(steps), {"AIXSSS_RELEASE": release.name, "AIXSSS_VERSION": version},
                  _held.get())


class BuildFailed(OpsError):
    """A build step of a release failed (exit 1); nothing live was touched."""


def _build_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a build step: this process's, less its secrets (a build runs third-party scripts)."""
    from aixsss_ops.output import is_secret_name

    env = {k: v for k, v in os.environ.items()
           if not is_secret_name(k) and k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("AIXSSS_OPS_")}
    return {**env, **extra}


def _program(argv0: str, cwd: Path, env: dict[str, str]) -> str | None:
    """The executable ``argv0`` names as exec finds it (a name with a slash: from ``cwd``); None: there is none."""
    if "/" in argv0:
        p = cwd / argv0
        return str(p) if p.is_file() and os.access(p, os.X_OK) else None
    return shutil.which(argv0, path=env.get("PATH", os.defpath))


def _run_step(release: Path, step: BuildStep, i: int, n: int, extra: dict[str, str],
              hold_fds: Sequence[int] = ()) -> None:
    """One build step, in a process group of its own (``procutil.run_group``): on its timeout, on an interrupt and
    when this process dies the whole group is killed, and so are programs a step left running in the background.
    ``hold_fds``: the release's build lock, held by the group's leader until the group is gone."""
    from aixsss_ops.procutil import run_group

    cwd = (release / step.cwd).resolve()
    if cwd != release.resolve() and release.resolve() not in cwd.parents:
        raise UsageError(f"build step {i}: cwd {step.cwd!r} is outside the release")
    env = _build_env({**extra, **step.env})
    if _program(step.run[0], cwd, env) is None:
        raise BuildFailed(f"build step {i}/{n} ({shlex.join(step.run)}): {step.run[0]} was not found",
                          hint="install it, or change app.build in ops.toml")
    log = release / f".build-{i}.log"
    with log.open("wb") as out:
        code = run_group(step.run, timeout=step.timeout, hold_fds=hold_fds, cwd=cwd, env=env,
                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_bytes()[-4000:].decode(errors="replace").splitlines()[-30:]
        what = f"did not finish within {step.timeout:g}s" if code is None else f"exited {code}"
        raise BuildFailed(f"build step {i}/{n} ({shlex.join(step.run)}) {what}; nothing live was touched",
                          details="last lines of its output:\n" + "\n".join(tail))


_held: ContextVar[tuple[int, ...]] = ContextVar("held", default=())  # the build lock, while a release is built


@contextmanager
def _building(releases_dir: Path, rid: str) -> Iterator[None]:
    fd = os.open(releases_dir / f".{rid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    token = None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        token = _held.set((fd,))
        yield
    finally:
        if token is not None:
            _held.reset(token)
        os.close(fd)


def find(releases_dir: Path, release_id: str) -> Release:
    path = releases_dir / release_id
    if not path.is_dir() or (path / BUILDING).exists():
        raise UsageError(f"unknown release {release_id!r} (see 'aixsss-ops deploy releases')")
    version, _, short = release_id.rpartition("-")
    return Release(release_id, version, short, path)
