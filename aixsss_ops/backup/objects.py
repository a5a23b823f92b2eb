"""Objects through S3 versioning: no object bytes are copied by a backup.

A backup records, per key, the version that was current at the snapshot instant T (key, version id, size,
ETag). A restore makes each recorded version current again by a server-side copy of that version id, and hides
keys created after T behind delete markers. No version is ever deleted, so the restore itself can be undone.

Stores give ``LastModified`` at a one-second resolution (SeaweedFS) or finer (MinIO, AWS). A version counts as
"at or before T" when its last-modified time plus the store's resolution is <= T; the backup starts its
snapshot just after a second boundary, so the window of doubt is a few milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from itertools import takewhile
from typing import Any

from aixsss_ops.errors import CheckFailed, OpsError, ServiceUnavailable
from aixsss_ops.s3 import S3Target

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MAX_SKEW = 2.0


@dataclass
class Version:
    key: str
    version_id: str
    last_modified: datetime
    is_latest: bool
    delete_marker: bool
    etag: str | None = None
    size: int | None = None


def _s3_error(target: S3Target, e: Exception) -> OpsError:
    from minio.error import S3Error

    if isinstance(e, S3Error):
        return OpsError(f"s3 at {target.endpoint}: {e.code}: {e.message}")
    reason = str(getattr(e, "reason", None) or e).rsplit(">: ", 1)[-1]  # urllib3's, without the connection's repr
    return ServiceUnavailable(f"s3 at {target.endpoint} is unreachable: {reason}",
                              hint="is the object store running? `aixsss-ops stack status`, "
                                   "`aixsss-ops doctor --only s3.reachable`")


PROBE_PREFIX = ".aixsss-ops/write-probe-"


def check_writable(target: S3Target, bucket: str) -> None:
    """Whether this key may write to ``bucket``, asked with an empty probe object whose version is deleted again
    (hidden by a delete marker where the key may not delete versions): a restore changes the bucket only after it
    has replaced the live database."""
    import io
    import secrets

    from minio.error import S3Error

    client = target.client()
    key = PROBE_PREFIX + secrets.token_hex(6)
    try:
        written = client.put_object(bucket, key, io.BytesIO(b""), 0)
        try:
            client.remove_object(bucket, key, version_id=written.version_id)
        except S3Error as e:
            if e.code != "AccessDenied" or not written.version_id:
                raise
            client.remove_object(bucket, key)
    except S3Error as e:
        if e.code == "AccessDenied":
            raise CheckFailed(f"the S3 key may not write to {bucket} ({e.code}: {e.message}): the restore would "
                              "replace the database, then fail on the objects; nothing was changed",
                              hint="give the key write access to the bucket, or restore with --db-only") from None
        raise _s3_error(target, e) from None
    except Exception as e:  # noqa: BLE001 - the store unreachable: one error naming it
        raise _s3_error(target, e) from None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


PAGE = 1000
FIT = 100  # a prefix with more entries is split further while there are prefixes to spare: a page costs per entry
LIST_JOBS = 8
MAX_LISTINGS = 256  # prefix listings at most: each may cost one request more than one listing of the whole bucket
MAX_DEPTH = 4


def _pages(client, bucket: str, prefix: str, delimiter: str | None = None,
           page: int | None = None) -> Iterator[ET.Element]:
    key_marker = version_marker = None
    while True:
        q = {"versions": "", "max-keys": str(page or PAGE)}
        if prefix:
            q["prefix"] = prefix
        if delimiter:
            q["delimiter"] = delimiter
        if key_marker is not None:
            q["key-marker"] = key_marker
            if version_marker:
                q["version-id-marker"] = version_marker
        # Minio._execute signs and sends the request with the client's retries and timeouts.
        root = ET.fromstring(client._execute("GET", bucket, query_params=q).data)
        yield root
        if root.findtext(f"{_NS}IsTruncated") != "true":
            return
        key_marker = root.findtext(f"{_NS}NextKeyMarker")
        version_marker = root.findtext(f"{_NS}NextVersionIdMarker")
        if not key_marker:
            raise OpsError(f"s3: truncated version listing of {bucket} without a NextKeyMarker")


def _versions(root: ET.Element) -> Iterator[Version]:
    """The versions and delete markers of one listing page, in the server's order (per key, newest first).

    The SDK's ``list_objects(include_version=True)`` parses versions and delete markers into separate lists and
    loses their relative order, which is what tells which one is newer when times tie; so the XML is read here.
    """
    for el in root:
        tag = el.tag.removeprefix(_NS)
        if tag not in ("Version", "DeleteMarker"):
            continue
        size = el.findtext(f"{_NS}Size")
        etag = el.findtext(f"{_NS}ETag")
        yield Version(
            key=el.findtext(f"{_NS}Key"),
            version_id=el.findtext(f"{_NS}VersionId") or "null",
            last_modified=_parse_time(el.findtext(f"{_NS}LastModified")),
            is_latest=el.findtext(f"{_NS}IsLatest") == "true",
            delete_marker=tag == "DeleteMarker",
            etag=etag.strip('"') if etag else None,
            size=int(size) if size is not None else None,
        )


# SeaweedFS (4.48) walks its directory tree in name order but pages in key order: a page boundary can skip a
# folder "d/" that has a sibling "d-x" or "d.x" (sorting below "/"), with every version under it, while its
# ListObjectsV2 pages stay right. A listing that fits in one page is complete; so prefixes are split until their
# listings fit in one, and a listing that still takes more pages is checked against the current objects, listed
# alongside its remaining pages, and a key it missed is listed on its own.

def _exact(client, bucket: str, key: str) -> list[Version]:
    """The versions of one key, in pages of 1000 (the most a store sends)."""
    if key.endswith("/"):  # with the delimiter this would list the folder; without it the key comes first
        return list(takewhile(lambda v: v.key == key, _versions(next(_pages(client, bucket, key, page=1000)))))
    return [v for root in _pages(client, bucket, key, delimiter="/", page=1000) for v in _versions(root) if v.key == key]


def _listing(client, bucket: str, prefix: str) -> list[Version]:
    found: list[Version] = []
    stop = threading.Event()

    def current() -> list[str]:
        out = []
        for o in client.list_objects(bucket, prefix=prefix, recursive=True):
            if stop.is_set():
                break
            out.append(o.object_name)
        return out

    side = None
    with ThreadPoolExecutor(1) as pool:
        try:
            for n, root in enumerate(_pages(client, bucket, prefix)):
                if n == 1:
                    side = pool.submit(current)
                found += _versions(root)
        except BaseException:
            stop.set()
            raise
        if side is not None:
            seen = {v.key for v in found}
            for key in side.result():
                if key not in seen:
                    found += _exact(client, bucket, key)
    return found


MAX_CHAR = "\U0010ffff"  # no character sorts higher: prefix + MAX_CHAR is a marker after every key under prefix
GAP_PROBES = 3  # a gap of at most this many characters between two known ones is probed one prefix per character


def _current_keys(client, bucket: str, prefix: str) -> Iterator[str]:
    """The current keys under ``prefix`` (ListObjectsV2, page after page), in key order. It costs the store a
    fraction of a version listing (no versions are read), but it omits keys whose newest version is a delete
    marker, so it only proposes where a prefix splits; probes confirm it."""
    token = None
    while True:
        q = {"list-type": "2", "max-keys": str(PAGE), "prefix": prefix}
        if token is not None:
            q["continuation-token"] = token
        root = ET.fromstring(client._execute("GET", bucket, query_params=q).data)
        for el in root.iterfind(f"{_NS}Contents/{_NS}Key"):
            yield el.text or ""
        if root.findtext(f"{_NS}IsTruncated") != "true":
            return
        token = root.findtext(f"{_NS}NextContinuationToken")
        if not token:
            raise OpsError(f"s3: truncated listing of {bucket} without a NextContinuationToken")


def _probe(client, bucket: str, prefix: str, marker: str | None = None) -> Version | None:
    """The first entry of a version listing of ``prefix`` after ``marker`` (``max-keys=1``). The store reads
    up to about a thousand directory entries for it, fewer when the prefix or the marker leaves fewer."""
    q = {"versions": "", "max-keys": "1", "prefix": prefix}
    if marker is not None:
        q["key-marker"] = marker
    return next(_versions(ET.fromstring(client._execute("GET", bucket, query_params=q).data)), None)


def _next_characters(client, bucket: str, prefix: str, seen: list[str]) -> tuple[list[Version], list[str]] | None:
    """Every character that follows ``prefix`` in some key, and the versions of the key named ``prefix``.

    ``seen`` (sorted) comes from the current keys, which lack keys whose newest version is a delete marker, so
    every gap is probed: between two characters one prefix probe per character when the gap is narrow (a few
    milliseconds each), else, and before the first character and after the last, marker probes (the first key
    after the last character found). None when a key continues the prefix with "/": SeaweedFS sorts the folder
    "d/" before its siblings "d-x", "d.x" (by name) while keys sort it after them, and its marker probes then
    skip one or the other. A gap holding "/" gets a marker probe, which finds such a folder: a prefix probe of a
    missing "d/" costs SeaweedFS at least as much (it reads the parent folder's entries that begin with "d", all
    of them when "d" is empty)."""
    if "/" in seen:
        return None

    def gap(bounds: tuple[str | None, str | None]) -> tuple[list[str], bool]:
        lo, hi = bounds
        if lo is not None and hi is not None and ord(hi) - ord(lo) - 1 <= GAP_PROBES and not lo < "/" < hi:
            return [chr(c) for c in range(ord(lo) + 1, ord(hi)) if _probe(client, bucket, prefix + chr(c))], False
        found, own_key = [], False
        marker = None if lo is None else prefix + lo + MAX_CHAR
        while (first := _probe(client, bucket, prefix, marker)) is not None:
            if first.key == prefix:  # an object named like the prefix: its versions come first
                own_key, marker = True, prefix
                continue
            c = first.key[len(prefix)]
            if c == hi:
                break
            found.append(c)
            marker = prefix + c + MAX_CHAR
        return found, own_key

    gaps = [(lo, hi) for lo, hi in zip([None, *seen], [*seen, None], strict=True)
            if lo is None or hi is None or ord(hi) - ord(lo) > 1]
    with ThreadPoolExecutor(min(len(gaps), LIST_JOBS)) as pool:
        probed = list(pool.map(gap, gaps))
    chars = sorted({*seen, *(c for found, _ in probed for c in found)})
    if "/" in chars:
        return None
    return (_exact(client, bucket, prefix) if any(own for _, own in probed) else []), chars


def _by_character(client, bucket: str, prefix: str, limit: int) -> tuple[list[Version], list[str]] | None:
    """A prefix whose listing takes more than one page, split by the characters that follow it, and the
    sub-prefixes that still hold more than half a page of keys split again, so that each listing fits in one page.

    The current keys (one ListObjectsV2 pass) propose the characters and the key counts; probes of the version
    listing confirm that no other character exists (see ``_next_characters``). They come in key order, so the
    keys after one character are all in once a key with another one follows: a sub-prefix to split again is
    probed while the pass goes on. None beyond ``limit`` sub-prefixes and when a key continues the prefix with
    "/"; a deeper sub-prefix that cannot be split is listed in one piece."""
    pool = ThreadPoolExecutor(LIST_JOBS)
    try:
        def examine(node: str, under: list[str]) -> Future:
            seen = sorted({k[len(node)] for k in under if len(k) > len(node)})
            return pool.submit(_next_characters, client, bucket, node, seen)

        cut = len(prefix)
        groups: dict[str, list[str]] = {}
        early: dict[str, Future] = {}
        last = None
        for k in _current_keys(client, bucket, prefix):
            if len(k) <= cut:
                continue
            c = k[cut]
            if c == "/":  # listed in one piece, see _next_characters
                return None
            if c != last:
                if last is not None and len(groups[last]) > PAGE // 2:
                    early[prefix + last] = examine(prefix + last, groups[last])
                early.pop(prefix + c, None)  # a character seen again (out of key order): examined with all its keys
                last = c
            groups.setdefault(c, []).append(k)
        own: list[Version] = []
        leaves: list[str] = []
        keys = [k for ks in groups.values() for k in ks]
        level = [(prefix, keys, examine(prefix, keys))]
        while level:
            deeper = []
            for i, (node, under, job) in enumerate(level):
                split = job.result()
                if split is None:
                    if node == prefix:
                        return None
                    leaves.append(node)
                    continue
                direct, chars = split
                subs: dict[str, list[str]] = {c: [] for c in chars}
                for k in under:
                    if len(k) > len(node):
                        subs[k[len(node)]].append(k)
                if len(leaves) + len(deeper) + len(subs) + len(level) - i - 1 > limit:
                    if node == prefix:
                        return None
                    leaves.append(node)  # its listing includes the key named like it
                    continue
                own += direct
                for c, sub in subs.items():
                    if len(sub) > PAGE // 2:
                        deeper.append((node + c, sub, early.pop(node + c, None) or examine(node + c, sub)))
                    else:
                        leaves.append(node + c)
            level = deeper
        return own, sorted(leaves)
    finally:
        pool.shutdown(cancel_futures=True)


def _children(client, bucket: str, prefix: str, limit: int) -> tuple[list[Version], list[str]] | None:
    """The versions of keys directly under ``prefix`` and its sub-prefixes: split at the next "/" when a page of
    FIT holds them, else at the next character; None when neither works within ``limit`` sub-prefixes."""
    root = next(_pages(client, bucket, prefix, delimiter="/", page=min(FIT, PAGE)))
    if root.findtext(f"{_NS}IsTruncated") == "true":
        return _by_character(client, bucket, prefix, limit)
    subs = [el.text for el in root.iterfind(f"{_NS}CommonPrefixes/{_NS}Prefix")]
    return (list(_versions(root)), subs) if len(subs) <= limit else None


def all_versions(client, bucket: str, jobs: int = LIST_JOBS) -> list[Version]:
    """Every version in ``bucket``, listed in parallel, one listing per key prefix.

    A store answers one listing page after another, and a page costs it time per version (SeaweedFS reads each
    key's versions directory), so the key space is split into prefixes, level by level (at the next "/", or at
    the next character where one page does not hold a folder), until there are enough to keep ``jobs`` listings
    busy or one more level would exceed MAX_LISTINGS. Each key lies in exactly one prefix or directly under an
    expanded one, so its versions keep the server's newest-first order.
    """
    found: list[Version] = []
    whole: list[str] = []  # prefixes split neither at "/" nor by character within the budget: listed in one piece
    frontier = [""]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for _ in range(MAX_DEPTH):
            if not frontier or len(frontier) + len(whole) >= 4 * jobs:
                break
            budget = MAX_LISTINGS - len(whole)
            level = list(pool.map(partial(_children, client, bucket, limit=budget), frontier))
            split = [r for r in level if r is not None]
            crowded = [p for p, r in zip(frontier, level, strict=True) if r is None]
            subs = [s for _, ss in split for s in ss]
            if len(whole) + len(crowded) + len(subs) > MAX_LISTINGS:
                break
            for direct, _ in split:
                found += direct
            whole += crowded
            frontier = subs
        for listed in pool.map(lambda p: _listing(client, bucket, p), whole + frontier):
            found += listed
    return found


def by_key(versions: list[Version]) -> dict[str, list[Version]]:
    out: dict[str, list[Version]] = {}
    for v in versions:
        out.setdefault(v.key, []).append(v)
    return out


def resolution(versions: list[Version]) -> timedelta:
    """The store's timestamp resolution: 1 s unless some time has a fractional part."""
    if any(v.last_modified.microsecond for v in versions):
        return timedelta(milliseconds=1)
    return timedelta(seconds=1)


def server_time(target: S3Target, timeout: float = 5.0) -> datetime:
    """The S3 server's clock (HTTP ``Date``), from an unauthenticated HEAD of the endpoint."""
    import urllib3

    try:
        r = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3.0, read=timeout), retries=False).request(
            "HEAD", target.endpoint.rstrip("/") + "/")
    except (urllib3.exceptions.HTTPError, OSError) as e:
        raise ServiceUnavailable(f"s3 at {target.endpoint} is unreachable: {e}") from None
    date = r.headers.get("Date")
    if not date:
        raise CheckFailed(f"s3 at {target.endpoint} sends no Date header: cannot check its clock")
    return parsedate_to_datetime(date).astimezone(UTC)


def check_clock(s3_now: datetime, pg_before: datetime, pg_after: datetime, max_skew: float = MAX_SKEW) -> float:
    """Skew in seconds between the S3 clock (1 s resolution) and Postgres; CheckFailed beyond ``max_skew``."""
    # Date is truncated to the second: the true S3 time was in [s3_now, s3_now + 1s).
    lo = (s3_now - pg_after).total_seconds()
    hi = (s3_now + timedelta(seconds=1) - pg_before).total_seconds()
    skew = 0.0 if lo <= 0 <= hi else (lo if lo > 0 else hi)
    if abs(skew) > max_skew:
        raise CheckFailed(
            f"the S3 server's clock and PostgreSQL's differ by {skew:+.1f}s (more than {max_skew:.0f}s): "
            "one restore point for both needs synchronised clocks",
            hint="run NTP (chrony/systemd-timesyncd) on both hosts",
        )
    return skew


def ensure_versioning(target: S3Target, bucket: str) -> bool:
    """Enable versioning on ``bucket``; True when it was not enabled before."""
    from minio.commonconfig import ENABLED
    from minio.versioningconfig import VersioningConfig

    c = target.client()
    try:
        if c.get_bucket_versioning(bucket).status == ENABLED:
            return False
        c.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
        if c.get_bucket_versioning(bucket).status != ENABLED:
            raise CheckFailed(f"s3 bucket {bucket}: versioning could not be enabled")
        return True
    except CheckFailed:
        raise
    except Exception as e:
        raise _s3_error(target, e) from None


def lifecycle_warnings(target: S3Target, bucket: str, required_days: int, add_days: int = 0) -> tuple[list[str], bool]:
    """Check noncurrent-version expiry against the retention; add a rule when asked. (warnings, rule_added)."""
    from minio.commonconfig import ENABLED, Filter
    from minio.lifecycleconfig import LifecycleConfig, NoncurrentVersionExpiration, Rule

    c = target.client()
    warnings: list[str] = []
    try:
        cfg = c.get_bucket_lifecycle(bucket)
    except Exception as e:
        return [f"cannot read the lifecycle of bucket {bucket}: {e}"], False
    rules = list(cfg.rules) if cfg else []
    for r in rules:
        nve = r.noncurrent_version_expiration
        days = getattr(nve, "noncurrent_days", None) if nve else None
        if r.status == ENABLED and days is not None and days < required_days:
            warnings.append(
                f"bucket {bucket}: lifecycle rule '{r.rule_id}' expires noncurrent versions after {days} day(s), "
                f"but the retention keeps backups up to {required_days} day(s): older backups would lose objects")
    has_rule = any(r.noncurrent_version_expiration for r in rules)
    if add_days and not has_rule:
        if add_days < required_days:
            warnings.append(f"backup.noncurrent_version_days = {add_days} is shorter than the retention "
                            f"({required_days} days): no lifecycle rule added")
            return warnings, False
        rule = Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id="aixsss-ops-noncurrent-expiry",
                    noncurrent_version_expiration=NoncurrentVersionExpiration(noncurrent_days=add_days))
        try:
            c.set_bucket_lifecycle(bucket, LifecycleConfig([*rules, rule]))
        except Exception as e:
            warnings.append(f"bucket {bucket}: could not add the noncurrent-version lifecycle rule: {e}")
            return warnings, False
        return warnings, True
    return warnings, False


@dataclass
class ObjectSnapshot:
    bucket: str
    at: str
    objects: list[dict[str, Any]] = field(default_factory=list)  # key, version_id, size, etag (sorted by key)
    resolution_s: float = 1.0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(json.dumps(self.objects, separators=(",", ":"), sort_keys=True).encode()).hexdigest()


def snapshot_at(versions: list[Version], bucket: str, at: datetime) -> ObjectSnapshot:
    """Per key, the newest version whose time is <= ``at`` (absent when that one is a delete marker)."""
    res = resolution(versions)
    objects = []
    for key, vs in by_key(versions).items():
        chosen = next((v for v in vs if v.last_modified + res <= at), None)
        if chosen is None or chosen.delete_marker:
            continue
        objects.append({"key": key, "version_id": chosen.version_id, "size": chosen.size, "etag": chosen.etag})
    objects.sort(key=lambda o: o["key"])
    return ObjectSnapshot(bucket, at.isoformat().replace("+00:00", "Z"), objects, res.total_seconds())


def _bucket_versions(target: S3Target, bucket: str) -> list[Version]:
    try:
        return all_versions(target.client(timeout=30), bucket)
    except OpsError:
        raise
    except Exception as e:
        raise _s3_error(target, e) from None


def take_snapshot(target: S3Target, bucket: str, at: datetime) -> ObjectSnapshot:
    return snapshot_at(_bucket_versions(target, bucket), bucket, at)


def rewind_plan(target: S3Target, bucket: str, at: datetime) -> tuple[ObjectSnapshot, ObjectPlan]:
    """The bucket as it was at ``at`` and what makes it so again, from one listing of its versions."""
    versions = _bucket_versions(target, bucket)
    snap = snapshot_at(versions, bucket, at)
    return snap, plan_from_versions(versions, asdict(snap), bucket)


# -- restore --

@dataclass
class ObjectPlan:
    bucket: str
    copy: list[dict[str, Any]] = field(default_factory=list)  # make this recorded version current again
    hide: list[str] = field(default_factory=list)  # keys created after T: add a delete marker
    unchanged: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)  # recorded versions the store no longer has

    def to_dict(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "copy": len(self.copy), "delete_marker": len(self.hide),
                "unchanged": self.unchanged, "missing_versions": [f"{m['key']}@{m['version_id']}" for m in self.missing]}


def plan_restore(target: S3Target, snapshot: dict[str, Any], bucket: str | None = None) -> ObjectPlan:
    bucket = bucket or snapshot["bucket"]
    return plan_from_versions(_bucket_versions(target, bucket), snapshot, bucket)


def plan_from_versions(versions: list[Version], snapshot: dict[str, Any], bucket: str) -> ObjectPlan:
    """What makes the bucket's current state (``versions``) the ``snapshot`` again."""
    keys = by_key(versions)
    have = {(v.key, v.version_id): v for v in versions if not v.delete_marker}
    plan = ObjectPlan(bucket)
    wanted = set()
    for o in snapshot["objects"]:
        wanted.add(o["key"])
        if (o["key"], o["version_id"]) not in have:
            plan.missing.append(o)
            continue
        current = keys[o["key"]][0]
        if not current.delete_marker and (
            current.version_id == o["version_id"] or (current.etag == o["etag"] and current.size == o["size"])
        ):
            plan.unchanged += 1
        else:
            plan.copy.append(o)
    for key, vs in keys.items():
        if key not in wanted and not vs[0].delete_marker:
            plan.hide.append(key)
    return plan


HIDE_BATCH = 1000  # keys per DeleteObjects request, the S3 limit


def apply_restore(target: S3Target, plan: ObjectPlan, jobs: int = 8,
                  on_done: Callable[[int], None] | None = None) -> dict[str, int]:
    """Server-side copies of the recorded versions and delete markers for newer keys; never deletes a version."""
    from minio.commonconfig import CopySource

    if plan.missing:
        raise CheckFailed(f"{len(plan.missing)} recorded object version(s) no longer exist in {plan.bucket}, e.g. "
                          + ", ".join(f"{m['key']}@{m['version_id']}" for m in plan.missing[:5]))
    c = target.client(timeout=60)

    def copy(o: dict[str, Any]) -> None:
        c.copy_object(plan.bucket, o["key"], CopySource(plan.bucket, o["key"], version_id=o["version_id"]))

    def hide(keys: list[str]) -> list[str]:
        """One DeleteObjects request; no version ids, so each key gets a delete marker on a versioned bucket."""
        from minio.deleteobjects import DeleteObject

        return [f"{e.name}: {e.message}" for e in c.remove_objects(plan.bucket, [DeleteObject(k) for k in keys])]

    workers = max(1, jobs)
    per_request = max(1, min(HIDE_BATCH, -(-len(plan.hide) // workers)))  # spread over the workers, <= 1000 keys
    batches = [plan.hide[i:i + per_request] for i in range(0, len(plan.hide), per_request)]
    tasks: list[tuple[Callable, Any]] = [(hide, b) for b in batches] + [(copy, o) for o in plan.copy]
    errors: list[str] = []

    def run(task: tuple[Callable, Any]) -> None:
        fn, arg = task
        keys = arg if isinstance(arg, list) else [arg["key"]]
        try:
            errors.extend(fn(arg) or ())
        except Exception as e:
            errors.extend(f"{k}: {e}" for k in keys)
        if on_done:
            on_done(len(keys))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, tasks))
    if errors:
        total = len(plan.copy) + len(plan.hide)
        raise OpsError(f"object restore: {len(errors)} of {total} operation(s) failed, e.g. {errors[0]}",
                       details="\n".join(errors[:50]),
                       hint="the bucket holds a mix of restored and current objects; rerun the restore (it skips "
                            "objects that already match)")
    return {"copied": len(plan.copy), "delete_markers": len(plan.hide), "unchanged": plan.unchanged}


def verify_versions(target: S3Target, snapshot: dict[str, Any]) -> list[str]:
    """Every recorded version must still exist with its ETag and size; returns the mismatches."""
    bucket = snapshot["bucket"]
    try:
        have = {(v.key, v.version_id): v for v in all_versions(target.client(timeout=30), bucket)
                if not v.delete_marker}
    except OpsError:
        raise
    except Exception as e:
        raise _s3_error(target, e) from None
    problems = []
    for o in snapshot["objects"]:
        v = have.get((o["key"], o["version_id"]))
        if v is None:
            problems.append(f"object {o['key']} version {o['version_id']} is missing from bucket {bucket}")
        elif v.etag != o["etag"] or v.size != o["size"]:
            problems.append(f"object {o['key']} version {o['version_id']}: ETag/size {v.etag}/{v.size} "
                            f"differ from the recorded {o['etag']}/{o['size']}")
    return problems
