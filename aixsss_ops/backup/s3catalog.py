"""The backup catalogue in an S3 bucket (``backup.destination = "s3"``).

A backup is still written to a local staging directory first, exactly as for a local destination (the
``<id>.partial/`` directory and its ``flock`` come from :class:`Catalog`), then uploaded to
``s3://<bucket>/<prefix>/<id>/...`` with ``manifest.json`` uploaded LAST, and the staging copy removed:

- ``<prefix>/<id>/manifest.json`` exists: complete (an S3 PUT is atomic, so a manifest is whole or absent).
- objects under ``<prefix>/<id>/`` but no manifest: incomplete (an interrupted upload or delete), unless this
  host holds the staging lock of that id (in progress); removed by the next ``create``/``prune``.
- deleting removes the manifest first, so an interrupted delete never leaves a complete-looking backup.

``verify`` and ``restore`` download a backup into ``<staging>/.fetch-<id>-<rand>/`` (locked while in use) and
read it there through the unchanged local code paths. ``meta.json`` (keep flag, last verification) is rewritten
in place.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from aixsss_ops.backup import disk
from aixsss_ops.backup import manifest as mf
from aixsss_ops.backup.catalog import PARTIAL, Catalog, Entry, Lock, Lookup, entry_of, ordered
from aixsss_ops.errors import CheckFailed, OpsError, ServiceUnavailable
from aixsss_ops.fsutil import atomic_write_json, flock_held
from aixsss_ops.s3 import S3Target, ensure_bucket

FETCH = ".fetch-"
T = TypeVar("T")


class S3Catalog(Lookup):
    def __init__(self, target: S3Target, bucket: str, prefix: str, staging: Path, jobs: int = 8):
        self.target = target
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.local = Catalog(staging)  # staging: partial directories and their locks, fetched copies
        self.root = staging
        self.jobs = max(1, jobs)
        self._client = None

    # -- plumbing --
    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"

    @property
    def client(self):
        if self._client is None:
            self._client = self.target.client(timeout=30.0)
        return self._client

    def _key(self, backup_id: str, rel: str = "") -> str:
        return "/".join(p for p in (self.prefix, backup_id, rel) if p)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        import urllib3
        from minio.error import S3Error

        try:
            return fn()
        except S3Error as e:
            raise OpsError(f"{what} in {self.location}: {e.code}: {e.message}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if disk.is_no_space(e):  # a download into the staging directory, not the store
                raise disk.full(self.root, what, "the partial download is removed") from None
            raise ServiceUnavailable(f"backup store {self.target.endpoint} is unreachable ({what}): {e}") from None

    def _get_json(self, key: str) -> Any:
        """The JSON object at ``key``; None when it does not exist."""
        from minio.error import S3Error

        def get():
            try:
                r = self.client.get_object(self.bucket, key)
            except S3Error as e:
                if e.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                return r.read()
            finally:
                r.close()
                r.release_conn()

        raw = self._call(f"reading {key}", get)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckFailed(f"{self.location}{key}: not valid JSON ({e})") from None

    def _put_json(self, key: str, data: Any) -> None:
        import io

        body = json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
        self._call(f"writing {key}", lambda: self.client.put_object(
            self.bucket, key, io.BytesIO(body), len(body), content_type="application/json"))

    def _ids(self) -> list[str]:
        base = self._key("") + "/" if self.prefix else ""
        objs = self._call("listing backups", lambda: list(self.client.list_objects(self.bucket, prefix=base)))
        return sorted(o.object_name[len(base):].rstrip("/") for o in objs if o.is_dir)

    def _keys(self, backup_id: str) -> list[str]:
        objs = self._call(f"listing backup {backup_id}", lambda: list(
            self.client.list_objects(self.bucket, prefix=self._key(backup_id) + "/", recursive=True)))
        return [o.object_name for o in objs]

    def _any(self, backup_id: str) -> bool:
        objs = self.client.list_objects(self.bucket, prefix=self._key(backup_id) + "/", recursive=True)
        return self._call(f"listing backup {backup_id}", lambda: next(iter(objs), None)) is not None

    def _remove(self, keys: list[str]) -> None:
        from minio.deleteobjects import DeleteObject

        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            errors = self._call("deleting", lambda c=chunk: list(
                self.client.remove_objects(self.bucket, [DeleteObject(k) for k in c])))
            if errors:
                raise OpsError(f"cannot delete {errors[0].name} from {self.location}: {errors[0].message}")

    def _in_progress(self, backup_id: str) -> bool:
        return flock_held(self.root / (backup_id + PARTIAL) / ".lock")

    # -- reading --
    def entries(self) -> list[Entry]:
        out: list[Entry] = []
        seen: set[str] = set()
        for bid in self._ids():
            seen.add(bid)
            where = self.location + bid
            data = self._get_json(self._key(bid, mf.MANIFEST))
            if data is None:
                if not self._any(bid):  # an empty "directory" (filer-backed stores keep them after a delete)
                    seen.discard(bid)
                    continue
                out.append(Entry(bid, where, "in-progress" if self._in_progress(bid) else "incomplete"))
                continue
            meta = self._get_json(self._key(bid, mf.META)) or {}
            problem = None
            if not isinstance(data, dict) or data.get("format") != mf.FORMAT:
                problem = "unknown manifest format"
            else:
                problem = next((f"manifest lacks '{k}'" for k in ("id", "created_at", "files", "database")
                                if k not in data), None)
            if problem:
                out.append(Entry(bid, where, "invalid", meta=meta, problem=problem))
                continue
            out.append(entry_of(bid, where, data, meta))
        for e in self.local.entries():  # a run still dumping locally, not yet uploaded
            if e.id not in seen and e.status == "in-progress":
                out.append(Entry(e.id, self.location + e.id, "in-progress"))
        return ordered(out)

    @contextmanager
    def fetch(self, entry: Entry) -> Iterator[Entry]:
        """Download the backup's files into a locked local directory; removed on exit."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = self.root / f"{FETCH}{entry.id}-{secrets.token_hex(3)}"
        work.mkdir(mode=0o700)
        lock = Lock(work / ".lock")
        try:
            base = self._key(entry.id) + "/"
            keys = [k for k in self._keys(entry.id) if k[len(base):] not in (mf.MANIFEST, mf.META)]

            def get(key: str) -> None:
                rel = key[len(base):]
                if not rel or rel.startswith(".") or ".." in rel.split("/"):
                    return
                self._call(f"downloading {key}", lambda: self.client.fget_object(self.bucket, key, str(work / rel)))

            with ThreadPoolExecutor(self.jobs) as pool:
                list(pool.map(get, keys))
            # the manifest as listed (already parsed): the local copy is what check_files compares against
            atomic_write_json(work / mf.MANIFEST, entry.manifest, mode=0o600)
            yield Entry(entry.id, work, entry.status, entry.manifest, entry.meta, entry.problem)
        finally:
            lock.release()
            shutil.rmtree(work, ignore_errors=True)

    # -- writing --
    def begin(self, backup_id: str) -> tuple[Path, Lock]:
        ensure_bucket(self.target, self.bucket)
        return self.local.begin(backup_id)

    def finish(self, partial: Path, lock: Lock, manifest: dict[str, Any], meta: dict[str, Any] | None = None,
               signature: dict[str, Any] | None = None) -> str:
        """Upload every file of the staged backup, ``meta.json``, ``manifest.hmac``, then ``manifest.json`` last;
        drop the staging."""
        backup_id = partial.name[: -len(PARTIAL)]
        files = [p for p in sorted(partial.rglob("*")) if p.is_file() and not p.name.startswith(".")
                 and p.name not in (mf.MANIFEST, mf.META)]

        def put(p: Path) -> None:
            key = self._key(backup_id, str(p.relative_to(partial)))
            self._call(f"uploading {key}", lambda: self.client.fput_object(self.bucket, key, str(p)))

        with ThreadPoolExecutor(self.jobs) as pool:
            list(pool.map(put, files))
        if meta:
            self._put_json(self._key(backup_id, mf.META), meta)
        if signature:
            self._put_json(self._key(backup_id, mf.SIGNATURE), signature)
        self._put_json(self._key(backup_id, mf.MANIFEST), manifest)  # only now is the backup complete
        self.local.abandon(partial, lock)
        return self.location + backup_id

    def abandon(self, partial: Path, lock: Lock | None) -> None:
        self.local.abandon(partial, lock)

    def work_dir(self, kind: str, backup_id: str):
        return self.local.work_dir(kind, backup_id)

    def cleanup(self) -> list[str]:
        """Local remains (dead partials, unlocked fetched copies) and remote backups without a manifest."""
        removed = self.local.cleanup()
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.is_dir() and p.name.startswith(FETCH) and not flock_held(p / ".lock"):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        if not self._call("checking the bucket", lambda: self.client.bucket_exists(self.bucket)):
            return removed
        for e in self.entries():
            if e.status == "incomplete":
                self._remove(self._keys(e.id))
                removed.append(self.location + e.id)
        return removed

    def delete(self, entry: Entry) -> None:
        keys = self._keys(entry.id)
        manifest = self._key(entry.id, mf.MANIFEST)
        self._remove([manifest])  # first: from here on the backup is no longer complete
        self._remove([k for k in keys if k != manifest])

    def update_meta(self, entry: Entry, **changes: Any) -> dict[str, Any]:
        key = self._key(entry.id, mf.META)
        meta = self._get_json(key) or {}
        meta.update(changes)
        self._put_json(key, meta)
        entry.meta = meta
        return meta
