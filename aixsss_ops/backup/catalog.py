"""The backup catalogue: one directory per backup under the destination.

- ``<id>.partial/`` while a backup is being written; its creator holds an exclusive ``flock`` on
  ``<id>.partial/.lock`` for its whole life, so a partial directory whose lock can be taken belongs to a dead
  (killed) run and is removed by the next run.
- ``<id>/`` with ``manifest.json``: complete. The rename happens after the manifest is fsynced.
- ``.deleting-<id>/``: a backup being pruned (renamed first, so it stops being listed at once).
- ``.restore-<id>-<hex>/``, ``.verify-<id>-<hex>/``: a restore's or verify's work folder (a decrypted copy of an
  encrypted dump), 0700, held with a ``flock`` on its ``.lock`` like a partial backup; removed when done, and by the
  next run when its owner was killed.

Ordering is by the manifest's snapshot time, never by directory name.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aixsss_ops.backup import manifest as mf
from aixsss_ops.errors import CheckFailed, OpsError, UsageError
from aixsss_ops.fsutil import atomic_write_json, flock_held, read_json

PARTIAL = ".partial"
DELETING = ".deleting-"
WORK = (".restore-", ".verify-")


@dataclass
class Entry:
    id: str
    path: Path
    status: str  # complete | incomplete | in-progress | invalid | mismatched (manifest id != directory name)
    manifest: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    @property
    def created_at(self) -> str | None:
        return self.manifest.get("created_at") if self.manifest else None

    @property
    def keep(self) -> bool:
        return bool(self.meta.get("keep"))

    @property
    def verified_ok(self) -> bool:
        return self.meta.get("verify", {}).get("ok") is True

    def summary(self) -> dict[str, Any]:
        m = self.manifest or {}
        files = m.get("files", {})
        ver = self.meta.get("verify") or {}
        return {
            "id": self.id,
            "status": self.status,
            "created_at": self.created_at,
            "label": m.get("label"),
            "database": (m.get("database") or {}).get("name"),
            "database_size": (m.get("database") or {}).get("size_bytes"),
            "dump_size": sum(f.get("size", 0) for f in files.values()),
            "objects": (m.get("objects") or {}).get("count"),
            "encrypted": bool(m.get("encryption")),
            "keep": self.keep,
            "last_verified": ver.get("at"),
            "last_verify_ok": ver.get("ok"),
            "problem": self.problem,
        }


class Lock:
    """An exclusive flock held for the life of a backup run."""

    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entry_of(backup_id: str, where: Any, manifest: dict[str, Any], meta: dict[str, Any]) -> Entry:
    """A backup with a well-formed manifest: complete, unless the manifest names another backup (a directory
    renamed or copied over another id): then ``mismatched``, which is never listed as restorable."""
    recorded = manifest.get("id")
    if recorded != backup_id:
        return Entry(backup_id, where, "mismatched", manifest, meta,
                     problem=f"the manifest records id '{recorded}', not '{backup_id}' (renamed or copied "
                             "from another backup)")
    return Entry(backup_id, where, "complete", manifest, meta)


def ordered(entries: list[Entry]) -> list[Entry]:
    """Complete backups by manifest time (never by name), then the rest by id."""
    complete = sorted((e for e in entries if e.status == "complete"), key=lambda e: mf.parse_iso(e.created_at))
    return complete + sorted((e for e in entries if e.status != "complete"), key=lambda e: e.id)


class Lookup:
    """``complete()`` and ``get(id | 'latest')`` over ``entries()``, for the local and the S3 catalog alike."""

    def complete(self) -> list[Entry]:
        return [e for e in self.entries() if e.status == "complete"]

    def get(self, backup_id: str) -> Entry:
        if not backup_id or "/" in backup_id or backup_id.startswith("."):
            raise UsageError(f"invalid backup id '{backup_id}'")
        if backup_id == "latest":
            done = self.complete()
            if not done:
                raise UsageError(f"no complete backup in {self.location}")
            return done[-1]
        for e in self.entries():
            if e.id == backup_id:
                if e.status != "complete":
                    raise CheckFailed(f"backup {backup_id} is {e.status}" + (f": {e.problem}" if e.problem else ""),
                                      hint="only complete backups can be verified or restored")
                return e
        raise UsageError(f"unknown backup id '{backup_id}' in {self.location}", hint="see `aixsss-ops backup list`")



class Catalog(Lookup):
    def __init__(self, root: Path):
        self.root = root

    @property
    def location(self) -> str:
        return str(self.root)

    @contextmanager
    def fetch(self, entry: Entry) -> Iterator[Entry]:
        """The backup as a local directory (verify and restore read its files): here, the entry itself."""
        yield entry

    # -- reading --
    def entries(self) -> list[Entry]:
        """Every backup directory, complete ones ordered by manifest time (oldest first), then the rest."""
        if not self.root.is_dir():
            return []
        out: list[Entry] = []
        for p in self.root.iterdir():
            if not p.is_dir() or p.name.startswith("."):
                continue
            if p.name.endswith(PARTIAL):
                bid = p.name[: -len(PARTIAL)]
                state = "in-progress" if flock_held(p / ".lock") else "incomplete"
                out.append(Entry(bid, p, state, meta={}))
                continue
            meta = read_json(p / mf.META, {}) or {}
            try:
                m = mf.load(p / mf.MANIFEST)
            except CheckFailed as e:
                out.append(Entry(p.name, p, "invalid", meta=meta, problem=e.message))
                continue
            out.append(entry_of(p.name, p, m, meta))
        return ordered(out)

    # -- writing --
    def begin(self, backup_id: str) -> tuple[Path, Lock]:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        path = self.root / (backup_id + PARTIAL)
        path.mkdir(mode=0o700)
        return path, Lock(path / ".lock")

    def finish(self, partial: Path, lock: Lock, manifest: dict[str, Any], meta: dict[str, Any] | None = None,
               signature: dict[str, Any] | None = None) -> Path:
        """Write the manifest atomically (its signature first), then make the backup visible as complete (rename)."""
        if meta:
            atomic_write_json(partial / mf.META, meta, mode=0o600)
        if signature:
            atomic_write_json(partial / mf.SIGNATURE, signature, mode=0o600)
        atomic_write_json(partial / mf.MANIFEST, manifest, mode=0o600)
        final = self.root / partial.name[: -len(PARTIAL)]
        (partial / ".lock").unlink(missing_ok=True)
        os.rename(partial, final)
        _fsync_dir(self.root)
        lock.release()
        return final

    def abandon(self, partial: Path, lock: Lock | None) -> None:
        shutil.rmtree(partial, ignore_errors=True)
        if lock:
            lock.release()

    def cleanup(self) -> list[str]:
        """Remove the remains of interrupted runs (dead ``.partial`` dirs, unfinished deletions)."""
        removed = []
        if not self.root.is_dir():
            return removed
        for p in self.root.iterdir():
            dead = (p.name.endswith(PARTIAL) or p.name.startswith(WORK)) and not flock_held(p / ".lock")
            if p.is_dir() and (dead or p.name.startswith(DELETING)):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
        return removed

    @contextmanager
    def work_dir(self, kind: str, backup_id: str) -> Iterator[Path]:
        """A private work folder for a restore or verify of ``backup_id`` (``kind``: "restore" or "verify")."""
        import secrets

        path = self.root / f".{kind}-{backup_id}-{secrets.token_hex(3)}"
        assert path.name.startswith(WORK)
        path.mkdir(mode=0o700, parents=True)
        lock = Lock(path / ".lock")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            lock.release()

    def delete(self, entry: Entry) -> None:
        tomb = self.root / (DELETING + entry.id)
        try:
            os.rename(entry.path, tomb)
        except OSError as e:
            raise OpsError(f"cannot delete backup {entry.id}: {e.strerror}") from None
        shutil.rmtree(tomb, ignore_errors=True)

    def update_meta(self, entry: Entry, **changes: Any) -> dict[str, Any]:
        meta = read_json(entry.path / mf.META, {}) or {}
        meta.update(changes)
        atomic_write_json(entry.path / mf.META, meta, mode=0o600)
        entry.meta = meta
        return meta
