"""Point-in-time recovery with pgBackRest: the engine's commands as argument lists, its ``info`` parsed, the
recovery window, the base backup a target time needs, and the target time itself.

pgBackRest does the work (base backups, WAL archiving, restore with replay to a time); this module only decides
what to ask it and reads its answers. Every command runs as the account that owns the cluster, with the config
file the embedded stack wrote, where the cluster is: one engine, two sites (``pitr_sites``: a subprocess of this
machine for the local runtime, an exec in the Postgres container for docker and swarm).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath
from typing import Any

from aixsss_ops.backup.pitr_sites import ContainerSite, HostSite
from aixsss_ops.config import OpsConfig
from aixsss_ops.context.embedded import read_secrets
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.output import scrubber
from aixsss_ops.runtime import local_specs

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# an ERROR or HINT line of pgBackRest's output: bare on stderr, after a timestamp and process id on stdout
_LOGGED = re.compile(r"^(?:\d{4}-\d\d-\d\d [\d:.]+ P\d+ +)?(ERROR|HINT): *(.*)$")
# the stanza statuses of a repository info read: ok, missing stanza path, no valid backups, missing stanza data,
# backup/expire running (the others: 4 different across repos, 5 database mismatch, 99 other)
_READABLE = (0, 1, 2, 3, 6)


def parse_target(text: str, now: datetime | None = None) -> datetime:
    """``T`` of ``restore --to-time``: ISO 8601 with a zone (``2026-12-06T12:00:00Z``, ``…+01:00``) or relative to
    now (``-15m``, ``-90s``, ``-2h``, ``-1d``); returned in UTC."""
    now = now or datetime.now(UTC)
    s = text.strip()
    m = _RELATIVE.match(s)
    if m:
        return _in_range(text, lambda: now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)]))
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--to-time {text!r} is neither ISO 8601 nor relative",
                         hint="e.g. 2026-12-06T12:00:00Z, 2026-12-06T13:00:00+01:00, -15m, -2h") from None
    if t.tzinfo is None:
        raise UsageError(f"--to-time {text!r} has no time zone", hint="add Z or an offset such as +01:00")
    return _in_range(text, lambda: t.astimezone(UTC))


def _in_range(text: str, compute: Callable[[], datetime]) -> datetime:
    """``compute()``, or a UsageError naming ``text`` when its instant falls outside the years 1 to 9999 in UTC
    (datetime's range: OverflowError, or ValueError for a too large timedelta)."""
    try:
        return compute()
    except (OverflowError, ValueError):
        raise UsageError(f"--to-time {text!r} is out of range: outside the years 1 to 9999 in UTC",
                         hint="e.g. 2026-12-06T12:00:00Z, -15m, -2h") from None


def iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z") if t else None


def _epoch(v: Any) -> datetime | None:
    return datetime.fromtimestamp(v, UTC) if isinstance(v, (int, float)) else None


@dataclass(frozen=True)
class BaseBackup:
    label: str
    type: str  # full | diff | incr
    started: datetime
    stopped: datetime  # the backup is consistent from here: the earliest T it can serve
    wal_start: str
    wal_stop: str
    size: int | None = None  # database size
    repo_size: int | None = None
    prior: str | None = None
    lsn_stop: int | None = None  # where the backup ended (pgBackRest's lsn.stop)

    @property
    def timeline(self) -> int | None:
        """The timeline the backup was taken on (its start segment's first 8 hex digits)."""
        return int(self.wal_start[:8], 16) if len(self.wal_start) >= 8 else None

    def ended_by(self, seg_size: int = 16 * 1024 * 1024) -> int:
        """An LSN at or after the backup's end: its stop LSN, else the end of its stop segment."""
        return self.lsn_stop if self.lsn_stop is not None else segment_end_lsn(self.wal_stop, seg_size)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.type, "started_at": iso(self.started), "stopped_at": iso(self.stopped),
                "wal_start": self.wal_start, "wal_stop": self.wal_stop, "timeline": self.timeline,
                "size": self.size, "repo_size": self.repo_size, "prior": self.prior}


@dataclass
class Info:
    """One stanza of ``pgbackrest info --output=json``."""

    stanza: str
    status_code: int
    status: str
    backups: list[BaseBackup] = field(default_factory=list)  # oldest first
    archive_id: str | None = None
    wal_min: str | None = None
    wal_max: str | None = None
    repo_status: list[str] = field(default_factory=list)  # "repo<key>: <message>" of each repository not ok

    @property
    def exists(self) -> bool:
        # 1: missing stanza path, 3: missing stanza data, 99: other (e.g. the repository's bucket does not exist)
        return self.status_code not in (1, 3, 99)

    @property
    def unreadable(self) -> str | None:
        """Why pgBackRest could not read the repository, in one line (the stanza's status, then the first line of
        each repository's); None for a status that answers (``_READABLE``) and for a bucket that does not exist
        (status 99, the store's NoSuchBucket: stanza-create makes the bucket)."""
        if self.status_code in _READABLE or any("NoSuchBucket" in m for m in self.repo_status):
            return None
        status = self.status or f"status {self.status_code}"
        repos = "; ".join(m.strip().splitlines()[0] for m in self.repo_status if m.strip())
        return f"{status} ({repos})" if repos else status


def parse_info(text: str, stanza: str) -> Info:
    data = json.loads(text or "[]")
    one = next((s for s in data if s.get("name") == stanza), None)
    if one is None:
        return Info(stanza, 1, "missing stanza")
    st = one.get("status") or {}
    archives = one.get("archive") or []
    current = archives[-1] if archives else {}
    backups = []
    for b in one.get("backup") or []:
        ts, ar, inf = b.get("timestamp") or {}, b.get("archive") or {}, b.get("info") or {}
        started, stopped = _epoch(ts.get("start")), _epoch(ts.get("stop"))
        if started is None or stopped is None:
            continue
        backups.append(BaseBackup(b.get("label", ""), b.get("type", ""), started, stopped, ar.get("start") or "",
                                  ar.get("stop") or "", inf.get("size"), (inf.get("repository") or {}).get("delta"),
                                  b.get("prior"), parse_lsn((b.get("lsn") or {}).get("stop"))))
    backups.sort(key=lambda b: b.stopped)
    return Info(stanza, int(st.get("code", 99)), st.get("message", ""), backups, current.get("id"),
                current.get("min"), current.get("max"), _repo_status(one.get("repo") or []))


def _repo_status(repos: list[dict[str, Any]]) -> list[str]:
    """``repo<key>: <message>`` of each repository whose status is not ok (pgBackRest 2.x lists them per stanza)."""
    out = []
    for n, r in enumerate(repos, 1):
        st = r.get("status") or {}
        if st.get("code", 0) != 0:
            out.append(f"repo{r.get('key', n)}: {st.get('message') or 'status ' + str(st.get('code'))}")
    return out


@dataclass(frozen=True)
class Window:
    """The instants a restore can reach: from the end of the oldest base backup after the newest gap in the archived
    WAL (``gap``: the last segment missing, None without one) to the newest archived WAL."""

    start: datetime | None
    end: datetime | None  # the newest archived WAL segment's time (archiving runs: "now" minus at most the RPO)
    gap: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"from": iso(self.start), "to": iso(self.end), "wal_missing": self.gap}

    def text(self) -> str:
        missing = f"WAL segment {self.gap} is missing from the archive" if self.gap else ""
        if self.start is None:
            if missing:
                return f"empty ({missing} and no base backup ends after it: `aixsss-ops backup base`)"
            return "empty (no base backup yet: `aixsss-ops backup base`)"
        span = f"{iso(self.start)} .. {iso(self.end) if self.end else 'now'}"
        return f"{span}; {missing}: nothing before the base backup after it restores" if missing else span


def window(info: Info, newest_wal: datetime | None, gap: str | None = None) -> Window:
    """``gap``: the newest archived WAL segment missing on the live timeline's path (``Engine.gap``): the window
    starts at the first base backup that begins after it."""
    backups = [b for b in info.backups if not gap or segno(b.wal_start) > segno(gap)]
    if not backups:
        return Window(None, None, gap)
    return Window(backups[0].stopped, max(newest_wal, info.backups[-1].stopped) if newest_wal else None, gap)


def parse_lsn(text: Any) -> int | None:
    """``X/Y`` (hex) as an integer; None for anything else."""
    m = re.match(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$", text.strip()) if isinstance(text, str) else None
    return (int(m.group(1), 16) << 32) + int(m.group(2), 16) if m else None


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_history(text: str) -> dict[int, int]:
    """A timeline history file (``<tli>.history``: ``parentTLI switchpoint reason`` a line): each ancestor
    timeline and the LSN where the history left it."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit() and parse_lsn(parts[1]) is not None:
            out[int(parts[0])] = parse_lsn(parts[1])
    return out


def usable(backup: BaseBackup, timeline: int | None, history: dict[int, int],
           seg_size: int = 16 * 1024 * 1024) -> bool:
    """A base backup restores onto ``timeline`` (None: its own) when it was taken on it, or on an ancestor of it
    (``history``: that timeline's history file) and ended at or before the LSN where the history left it."""
    b = backup.timeline
    if timeline is None or b is None or b == timeline:
        return True
    return b in history and backup.ended_by(seg_size) <= history[b]


def choose_backup(info: Info, target: datetime, timeline: int | None = None,
                  history: dict[int, int] | None = None, gap: str | None = None) -> BaseBackup:
    """The newest base backup consistent at or before ``target`` (the one that needs the least WAL replayed) that
    restores onto ``timeline`` (``usable``), beginning after the archived WAL missing at ``gap`` when there is one."""
    fit = [b for b in info.backups if b.stopped <= target]
    if not fit:
        raise UsageError(f"{iso(target)} is outside the point-in-time recovery window "
                         f"({window(info, None, gap).text()}): no base backup ends before it",
                         hint="pick a time inside the window (`aixsss-ops backup list` shows it)")
    ok = [b for b in fit if usable(b, timeline, history or {})]
    if not ok:
        b = fit[-1]
        left = (history or {}).get(b.timeline or 0)
        why = (f"timeline {timeline} left timeline {b.timeline} at {lsn_text(left)}, before it ended"
               if left is not None else f"timeline {b.timeline} is not an ancestor of timeline {timeline}")
        raise UsageError(f"{iso(target)} is on timeline {timeline}, and no base backup ending before it is on that "
                         f"timeline's history: the newest, {b.label}, was taken on timeline {b.timeline} and "
                         f"{why} (a restore --to-time began timeline {timeline})",
                         hint="take a base backup (`aixsss-ops backup base`): every T after its end restores")
    return ok[-1]


def segno(segment: str, seg_size: int = 16 * 1024 * 1024) -> int:
    """The segment number of WAL segment ``segment`` (24 hex digits: timeline, log, seg)."""
    return int(segment[8:16], 16) * (0x100000000 // seg_size) + int(segment[16:24], 16)


def segment_name(timeline: int, number: int, seg_size: int = 16 * 1024 * 1024) -> str:
    per_log = 0x100000000 // seg_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def missing_wal(files: list[WalFile], start_segment: str, timeline: int | None, history: dict[int, int],
                until: datetime | None = None, seg_size: int = 16 * 1024 * 1024) -> list[tuple[str, str]]:
    """The runs of WAL segments (first, last) a replay from ``start_segment`` onto ``timeline`` (following the
    switches of its ``history``; None: the start segment's timeline) needs that the archive lacks while a later
    segment of that path is archived; up to the first segment archived at or after ``until`` when given (the one
    that holds that instant). Empty: the archived WAL is contiguous."""
    base = int(start_segment[:8], 16)
    target = timeline or base
    begins = []  # (first segment number, timeline) along the path, oldest first
    start_of = 0
    for tli, switch in sorted(history.items()):
        begins.append((start_of, tli))
        start_of = switch // seg_size
    begins.append((start_of, target))

    def tli_of(n: int) -> int:
        return [tli for first, tli in begins if first <= n][-1]

    first = segno(start_segment, seg_size)
    on_path = sorted((segno(w.segment, seg_size), w) for w in files
                     if int(w.segment[:8], 16) == tli_of(segno(w.segment, seg_size))
                     and segno(w.segment, seg_size) >= first)
    if until is not None:
        reached = next((i for i, (_n, w) in enumerate(on_path) if w.time and w.time >= until), None)
        if reached is not None:
            on_path = on_path[:reached + 1]
    gaps, expect = [], first
    for n, _w in on_path:
        if n > expect:
            gaps.append((segment_name(tli_of(expect), expect, seg_size), segment_name(tli_of(n - 1), n - 1, seg_size)))
        expect = max(expect, n + 1)
    return gaps


@dataclass(frozen=True)
class WalFile:
    name: str  # 24 hex digits of a segment (timeline, log, seg), possibly followed by -<sha1>.<ext>
    size: int
    time: datetime | None

    @property
    def segment(self) -> str:
        return self.name[:24]


def parse_repo_ls(text: str) -> tuple[list[WalFile], dict[int, datetime]]:
    """``pgbackrest repo-ls --recurse --output=json`` of an archive id: the WAL segment files (no .backup files),
    and each timeline's history file with the time it was archived (when that timeline began)."""
    data = json.loads(text or "{}")
    out, timelines = [], {}
    for path, meta in data.items():
        name = path.rsplit("/", 1)[-1]
        if meta.get("type") != "file":
            continue
        h = re.match(r"^([0-9A-F]{8})\.history$", name)
        if h and _epoch(meta.get("time")):
            timelines[int(h.group(1), 16)] = _epoch(meta.get("time"))
        elif re.match(r"^[0-9A-F]{24}-", name) and ".backup" not in name:
            out.append(WalFile(name, int(meta.get("size") or 0), _epoch(meta.get("time"))))
    out.sort(key=lambda w: w.segment)
    # a timeline begins at its promotion, before its history file is archived: right after the previous cluster's
    # last segment, which its shutdown switched and archived (the newest segment of an older timeline archived by
    # then); an instant between the two is replayed on the new timeline, the old one holding no commit after it
    for tl, archived_at in timelines.items():
        before = [w.time for w in out if w.time and w.time <= archived_at and int(w.segment[:8], 16) < tl]
        if before:
            timelines[tl] = max(before)
    return out, timelines


def timeline_at(timelines: dict[int, datetime], target: datetime) -> int | None:
    """The timeline that was live at ``target``: the newest one begun before it (None: the base backup's own).
    A restore to an instant before an earlier restore must not follow the timeline that restore began.
    ``timelines``: when each began (``parse_repo_ls``)."""
    begun = [tl for tl, t in timelines.items() if t <= target]
    return max(begun) if begun else None


def wal_after(files: list[WalFile], start_segment: str) -> list[WalFile]:
    """The archived segments a restore from a backup starting at ``start_segment`` may replay (any timeline)."""
    return [w for w in files if w.segment[8:] >= start_segment[8:]]


def _command_failed(command: str, r: subprocess.CompletedProcess, log_hint: str) -> OpsError:
    """A failed pgBackRest command as one error: the message its first ERROR line (else its last line), the hint
    its HINT lines then where its log is, the details its last 20 lines."""
    lines = [ln for ln in (r.stderr or r.stdout or "").strip().splitlines() if ln.strip()]
    logged = [m.groups() for m in (_LOGGED.match(ln.strip()) for ln in lines) if m]
    errors = [text.strip() for level, text in logged if level == "ERROR"]
    hints = [text.strip() for level, text in logged if level == "HINT"]
    said = errors[0] if errors else lines[-1].strip() if lines else "no message"
    return OpsError(f"pgbackrest {command} failed (exit {r.returncode}): {said}", details="\n".join(lines[-20:]),
                    hint="; ".join([*hints, f"its log: {log_hint}"]))


class Engine:
    """pgBackRest's commands against the stack's cluster, wherever pgBackRest runs (``site``: a ``HostSite`` for
    the local runtime, a ``ContainerSite`` for docker and swarm)."""

    def __init__(self, site: HostSite | ContainerSite):
        self.site = site
        self.stanza = site.stanza
        self._histories: dict[tuple[str, int], dict[int, int]] = {}  # history files do not change once archived

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            abort: threading.Event | None = None) -> subprocess.CompletedProcess:
        """``abort``: an event that stops the command (a restore) when set."""
        r = self.site.run(args, timeout, abort) if abort is not None else self.site.run(args, timeout)
        if check and r.returncode != 0:
            raise _command_failed(args[0], r, self.site.log_hint)
        return r

    def info(self) -> Info:
        """The stanza as pgBackRest's info reads it; an OpsError when it cannot read the repository (info exits 0
        then, with the cause in the stanza's and the repository's status)."""
        r = self.run("info", "--output=json", timeout=60, check=False)
        if r.returncode != 0 and not r.stdout.strip():
            raise OpsError(f"pgbackrest info failed: {(r.stderr or '').strip().splitlines()[-1:] or r.returncode}")
        info = parse_info(r.stdout, self.stanza)
        why = info.unreadable
        if why:
            details = "\n".join([*info.repo_status, *(r.stderr or "").strip().splitlines()])
            raise OpsError(f"pgbackrest info: the repository cannot be read: {why}",
                           hint=f"its log: {self.site.log_hint}", details=details or None)
        return info

    def stanza_create(self) -> None:
        self.site.prepare_repo()
        self.run("stanza-create", timeout=120)

    def check(self, timeout: float = 120) -> None:
        """Switches the WAL segment and waits until it is archived: everything written before it is in the repo."""
        self.run("check", timeout=timeout)

    def backup(self, kind: str) -> None:
        self.run("backup", f"--type={kind}", timeout=24 * 3600)

    def wal_files(self, archive_id: str | None) -> tuple[list[WalFile], dict[int, datetime]]:
        if not archive_id:
            return [], {}
        r = self.run("repo-ls", "--recurse", "--output=json", f"archive/{self.stanza}/{archive_id}", timeout=120)
        return parse_repo_ls(r.stdout)

    def history(self, archive_id: str | None, timeline: int | None) -> dict[int, int]:
        """The ancestors of ``timeline`` and where its history left each (its archived history file; empty for
        timeline 1 or None)."""
        if not archive_id or not timeline or timeline <= 1:
            return {}
        if (archive_id, timeline) not in self._histories:
            r = self.run("repo-get", f"archive/{self.stanza}/{archive_id}/{timeline:08X}.history", timeout=60)
            self._histories[archive_id, timeline] = parse_history(r.stdout)
        return self._histories[archive_id, timeline]

    def gap(self, info: Info, files: list[WalFile], timelines: dict[int, datetime]) -> str | None:
        """The last segment of the newest gap in the archived WAL on the live (newest) timeline's path from the
        oldest base backup on (None: contiguous): no instant before the base backup that begins after it restores."""
        if not info.backups or not files:
            return None
        live = max([*timelines, *(int(w.segment[:8], 16) for w in files)])
        hist = self.history(info.archive_id, live)
        backups = [b for b in info.backups if usable(b, live, hist)]
        if not backups:
            return None
        gaps = missing_wal(files, backups[0].wal_start, live, hist)
        return gaps[-1][1] if gaps else None

    def restore(self, into: PurePath, label: str, target: datetime, timeline: int | None,
                abort: threading.Event | None = None) -> None:
        """Restore base backup ``label`` into the empty folder ``into`` with replay up to ``target``, then promote
        (``abort``: stops it when set, where the site can). The restore_command points at the stack's own config
        (pg1-path = the live data folder this one will replace)."""
        get = " ".join([*self.site.command(), "archive-get", "%f", '"%p"'])
        # pgBackRest's restore empties the stanza's archive spool (old acknowledgements must not make a new cluster
        # skip archiving): the live cluster's, whose archive-push then waits out archive-timeout (60 s) for an
        # acknowledgement gone, holding up its shutdown. So the restore is given a spool folder of its own, and the
        # live spool is emptied by the site's ``switch``, with the replaced cluster stopped.
        self.run("restore", f"--pg1-path={into}", f"--spool-path={self.site.spool}-restore", f"--set={label}",
                 "--type=time",
                 f"--target={target.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00",
                 "--target-action=promote", f"--target-timeline={timeline or 'current'}",
                 f"--recovery-option=restore_command={get}", timeout=24 * 3600, abort=abort)


def repo_bucket(cfg: OpsConfig) -> tuple[Any, str] | None:
    """(S3Target, bucket) of a repository in a bucket (``destination = "s3"``), as this host reaches the store:
    ``backup.s3_endpoint`` or the embedded store's plain port; None for a repository in a folder or volume."""
    b = cfg.backup
    if b.destination != "s3":
        return None
    from aixsss_ops.s3 import S3Target

    same = not b.s3_access_key
    return (S3Target(b.s3_endpoint or f"http://{cfg.host}:{cfg.ports.s3}",
                     cfg.s3.access_key if same else b.s3_access_key,
                     (cfg.s3.secret_key if same else b.s3_secret_key).get_secret_value(), cfg.s3.region),
            b.s3_bucket)


def engine_for(cfg: OpsConfig, layout: Layout, write_config: bool = True, runtime: Any = None) -> Engine | None:
    """pgBackRest against the embedded stack's cluster; None when ``backup.pitr`` is off. Local runtime:
    ``write_config`` writes pgbackrest.conf first (the same file ``stack up`` writes; doctor only reads it).
    Docker and swarm: pgBackRest in the Postgres container of ``runtime``, the stack's runtime (the one
    ``stack.engines.open_stack`` picks: this module does not choose an engine), whose config the container writes
    itself at start."""
    if not cfg.backup.pitr:
        return None
    if cfg.runtime != "local":
        if runtime is None:
            raise TypeError(f"engine_for: runtime {cfg.runtime!r} runs Postgres in a container: pass the stack's runtime")
        return Engine(ContainerSite(cfg, runtime, repo_bucket(cfg)))
    arch = local_specs.write_pgbackrest_conf(cfg, layout) if write_config else local_specs.archiving(cfg, layout)
    if arch is None:
        return None
    sec = read_secrets(layout)
    if sec:
        scrubber.add(*sec.values())
    bucket = repo_bucket(cfg)
    repo = None if bucket else Path(local_specs.pgbackrest_repo_options(cfg)["repo1-path"])
    return Engine(HostSite(local_specs.cluster(cfg, layout), arch, sec["postgres_superuser_password"] if sec else None,
                           repo, bucket))


def newest_wal(files: list[WalFile]) -> datetime | None:
    times = [w.time for w in files if w.time]
    return max(times) if times else None


def segment_end_lsn(segment: str, seg_size: int = 16 * 1024 * 1024) -> int:
    """The LSN just past WAL segment ``segment`` (24 hex digits: timeline, log, seg)."""
    log, seg = int(segment[8:16], 16), int(segment[16:24], 16)
    return (log << 32) + (seg + 1) * seg_size


def journal_path(layout: Layout) -> Path:
    """Where ``restore --to-time`` records the folders of a restore in progress (what an interrupted one left)."""
    return layout.pg_data.parent / "pitr-restore.json"
