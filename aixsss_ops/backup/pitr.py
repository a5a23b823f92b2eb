"""Point-in-time recovery with pgBackRest: the engine's commands as argument lists, its ``info`` parsed, the
recovery window, the base backup a target time needs, and the target time itself.

pgBackRest does the work (base backups, WAL archiving, restore with replay to a time); this module only decides
what to ask it and reads its answers. Every command runs as the account that owns the cluster, with the config
file the embedded stack wrote, where the cluster is: one engine, two sites (``HostSite``: a subprocess of this
machine for the local runtime; ``ContainerSite``: an exec in the Postgres container for docker).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from aixsss_ops.config import OpsConfig
from aixsss_ops.context.embedded import read_secrets
from aixsss_ops.context.layout import Layout
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.output import scrubber
from aixsss_ops.procutil import die_with_parent
from aixsss_ops.runtime import local_specs
from aixsss_ops.runtime.pg_cluster import Archiving, Cluster, os_account

_RELATIVE = re.compile(r"^-\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_target(text: str, now: datetime | None = None) -> datetime:
    """``T`` of ``restore --to-time``: ISO 8601 with a zone (``2026-12-06T12:00:00Z``, ``…+01:00``) or relative to
    now (``-15m``, ``-90s``, ``-2h``, ``-1d``); returned in UTC."""
    now = now or datetime.now(UTC)
    s = text.strip()
    m = _RELATIVE.match(s)
    if m:
        return now - timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        t = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--to-time {text!r} is neither ISO 8601 nor relative",
                         hint="e.g. 2026-12-06T12:00:00Z, 2026-12-06T13:00:00+01:00, -15m, -2h") from None
    if t.tzinfo is None:
        raise UsageError(f"--to-time {text!r} has no time zone", hint="add Z or an offset such as +01:00")
    return t.astimezone(UTC)


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

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "type": self.type, "started_at": iso(self.started), "stopped_at": iso(self.stopped),
                "wal_start": self.wal_start, "wal_stop": self.wal_stop, "size": self.size,
                "repo_size": self.repo_size, "prior": self.prior}


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

    @property
    def exists(self) -> bool:
        # 1: missing stanza path, 3: missing stanza data, 99: other (e.g. the repository's bucket does not exist)
        return self.status_code not in (1, 3, 99)


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
                                  b.get("prior")))
    backups.sort(key=lambda b: b.stopped)
    return Info(stanza, int(st.get("code", 99)), st.get("message", ""), backups, current.get("id"),
                current.get("min"), current.get("max"))


@dataclass(frozen=True)
class Window:
    """The instants a restore can reach: from the end of the oldest base backup to the newest archived WAL."""

    start: datetime | None
    end: datetime | None  # the newest archived WAL segment's time (archiving runs: "now" minus at most the RPO)

    def to_dict(self) -> dict[str, Any]:
        return {"from": iso(self.start), "to": iso(self.end)}

    def text(self) -> str:
        if self.start is None:
            return "empty (no base backup yet: `aixsss-ops backup base`)"
        return f"{iso(self.start)} .. {iso(self.end) if self.end else 'now'}"


def window(info: Info, newest_wal: datetime | None) -> Window:
    if not info.backups:
        return Window(None, None)
    return Window(info.backups[0].stopped, max(newest_wal, info.backups[-1].stopped) if newest_wal else None)


def choose_backup(info: Info, target: datetime) -> BaseBackup:
    """The newest base backup consistent at or before ``target`` (the one that needs the least WAL replayed)."""
    fit = [b for b in info.backups if b.stopped <= target]
    if not fit:
        raise UsageError(f"{iso(target)} is outside the point-in-time recovery window "
                         f"({window(info, None).text()}): no base backup ends before it",
                         hint="pick a time inside the window (`aixsss-ops backup list` shows it)")
    return fit[-1]


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
    return out, timelines


def timeline_at(timelines: dict[int, datetime], target: datetime) -> int | None:
    """The timeline that was live at ``target``: the newest one begun before it (None: the base backup's own).
    A restore to an instant before an earlier restore must not follow the timeline that restore began."""
    begun = [tl for tl, t in timelines.items() if t <= target]
    return max(begun) if begun else None


def wal_after(files: list[WalFile], start_segment: str) -> list[WalFile]:
    """The archived segments a restore from a backup starting at ``start_segment`` may replay (any timeline)."""
    return [w for w in files if w.segment[8:] >= start_segment[8:]]


class RestoreNotStopped(OpsError):
    """A stopped pgBackRest restore still has a process writing into its folder: the folder and what finds that
    process again (the container's pid file) stay, for the next ``restore --to-time`` to stop it first."""


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the process group ``proc`` leads, then wait (at most 10 s) until none of it is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _group_alive(proc.pid):
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, which write nothing, do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _restoring_into(folder: Path) -> list[int]:
    """The pids of this machine's processes whose arguments name ``folder`` as pgBackRest's ``--pg1-path``."""
    flag = f"--pg1-path={folder}".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if flag in cmdline.read_bytes().split(b"\0"):
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _stop_postgres(runtime, strict: bool) -> None:
    try:
        runtime.stop("postgres")
    except OpsError:
        if strict:
            raise


class HostSite:
    """Where pgBackRest runs for the local runtime: a subprocess on this machine, as the account that owns the
    cluster, with the config file the embedded stack wrote (``runtime.pg_cluster.Archiving``); the superuser's
    password in ``PGPASSWORD`` for the commands that connect. Folders are paths of this machine."""

    def __init__(self, cluster: Cluster, archiving: Archiving, password: str | None, repo: Path | None = None,
                 bucket: tuple[Any, str] | None = None):
        self.cluster, self.arch, self.password = cluster, archiving, password
        self.repo = repo  # a local repository's folder (None: a bucket)
        self.bucket = bucket  # (S3Target, name) of a repository in a bucket
        self.stanza = archiving.stanza
        self.data = cluster.datadir
        self.log_hint = str(archiving.root / "log")  # where pgBackRest's log is
        self.spool = archiving.root / "spool"

    def command(self, *args: str) -> list[str]:
        return self.arch.command(*args)

    def run(self, args: tuple[str, ...], timeout: float,
            abort: threading.Event | None = None) -> subprocess.CompletedProcess:
        """pgBackRest ``args``; with ``abort``, the command is killed as soon as that event is set (an OpsError)."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
        if self.password:
            env["PGPASSWORD"] = self.password
        argv = self.arch.command(*args)
        if abort is None:
            try:  # pgBackRest dies with this process: a killed restore leaves no writer behind in its folder
                return self.cluster._run_as(argv, env=env, timeout=timeout, preexec_fn=die_with_parent)
            except subprocess.TimeoutExpired:
                raise OpsError(f"pgbackrest {args[0]} did not finish within {timeout:.0f}s") from None
        # as above, pgBackRest dies with this process; and in a process group of its own: stopping it stops
        # pgBackRest's worker processes too, before the caller removes the folder they write into
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=die_with_parent, start_new_session=True, **self.cluster.as_account())
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=0.1)
                    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
                except subprocess.TimeoutExpired:
                    if abort.is_set():
                        raise OpsError(f"pgbackrest {args[0]} stopped") from None
                    if time.monotonic() > deadline:
                        raise OpsError(f"pgbackrest {args[0]} did not finish within {timeout:.0f}s") from None
        except BaseException:
            _kill_group(proc)
            if _group_alive(proc.pid):
                raise RestoreNotStopped(f"a process of pgbackrest {args[0]} still runs 10 s after SIGKILL",
                                        hint=f"see `ps -g {proc.pid}`; its log: {self.log_hint}") from None
            raise

    def config_problem(self) -> str | None:
        return None if self.arch.config.exists() else f"no pgBackRest config at {self.arch.config}"

    def prepare_repo(self) -> None:
        """A repository's bucket exists before the stanza is created in it (pgBackRest creates none)."""
        if self.bucket is not None:
            from aixsss_ops.s3 import ensure_bucket

            ensure_bucket(*self.bucket)

    def mkdir(self, path: Path) -> None:
        path.mkdir(mode=0o700)
        acct = os_account(self.cluster.os_user)
        if acct:
            os.chown(path, acct.pw_uid, acct.pw_gid)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def rmtree(self, path: Path) -> None:
        shutil.rmtree(path)

    def switch(self, runtime, moves: list[tuple[Path, Path]], strict: bool = True) -> None:
        """Postgres stopped, the folders moved (each ``from -> to``), Postgres started. ``strict``: a failing stop
        is an error (else it is ignored: a cluster that did not come up)."""
        _stop_postgres(runtime, strict)
        shutil.rmtree(self.spool / "archive", ignore_errors=True)  # the acknowledgements of the cluster replaced
        for a, b in moves:
            a.rename(b)
        runtime.start("postgres")

    def settle(self, runtime, kept: Path, new: Path) -> list[str]:
        """What a killed restore left before Postgres can start again: a process of a pgBackRest restore into
        ``new`` still alive (it dies with the command, unless it outlived a SIGKILL) is killed, and the live folder
        moved aside and not replaced comes back."""
        from aixsss_ops.poll import poll_until

        done = []
        left = _restoring_into(new)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if left:
            if not poll_until(lambda: not _restoring_into(new), 10, interval=0.05):
                raise OpsError(f"the pgBackRest restore into {new} left by the interrupted run does not stop",
                               hint=f"see `ps -p {','.join(map(str, left))}`; its log: {self.log_hint}")
            done.append("stopped the pgBackRest restore still running")
        if not self.data.exists() and kept.exists():
            kept.rename(self.data)
            done.append(f"moved {kept.name} back to {self.data.name}")
        return done

    def repo_usage(self) -> tuple[str, int, int] | None:
        """(where, free bytes, total bytes) of a local repository's file system; None for a bucket."""
        repo = self.repo
        if repo is None:
            return None
        usage = shutil.disk_usage(repo if repo.exists() else repo.parent)
        return str(repo), usage.free, usage.total


class ContainerSite:
    """Where pgBackRest runs for the docker runtime: inside the Postgres container, through the runtime's exec (as
    the postgres account), with the config the container writes at start (docker_specs.postgres). Folders are
    paths inside the container; the live data folder is swapped by the container itself before Postgres starts
    (``docker_specs.PITR_SWAP``): the file with the moves is written into the container whatever its state."""

    PIDFILE = "pitr-restore.pid"
    STOP_WAIT = 60  # seconds an aborted restore has to be gone, its stop asked again and again

    def __init__(self, cfg: OpsConfig, runtime, bucket: tuple[Any, str] | None = None):
        from aixsss_ops.runtime import docker_specs as specs

        self.cfg, self.runtime, self.specs = cfg, runtime, specs
        self.bucket = bucket  # (S3Target, name) of a repository in a bucket; None: the pgbackrest volume
        self.stanza = cfg.project
        self.data = PurePosixPath(specs.PG_DATA)
        self.spool = PurePosixPath(specs.PGBACKREST) / "spool"
        self.log_hint = (f"{specs.PGBACKREST}/log in the {specs.container_name(cfg, 'postgres')} container "
                         f"(volume {specs.volume_name(cfg, 'pgbackrest')})")

    def command(self, *args: str) -> list[str]:
        return self.specs.pgbackrest_command(self.cfg, *args)

    def _exec(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        r = self.runtime.exec("postgres", argv, timeout=timeout)
        return subprocess.CompletedProcess(argv, r.returncode, (r.stdout or b"").decode("utf-8", "replace"),
                                           (r.stderr or b"").decode("utf-8", "replace"))

    def run(self, args: tuple[str, ...], timeout: float,
            abort: threading.Event | None = None) -> subprocess.CompletedProcess:
        """pgBackRest ``args`` in the container; with ``abort``, a restore is stopped as soon as that event is set
        (an OpsError), every process of it gone before this returns."""
        argv = self.command(*args)
        if not args or args[0] != "restore":
            return self._exec(argv, timeout)
        # its pid, so a restore whose command was killed (the exec'd process lives on) can be stopped
        pid = f"{self.specs.PG_HOME}/{self.PIDFILE}"
        wrapped = ["sh", "-c", f'echo $$ > {pid}; exec "$@"', "sh", *argv]
        try:
            if abort is None:
                result = self._exec(wrapped, timeout)
            else:
                into = next(a.partition("=")[2] for a in args if a.startswith("--pg1-path="))
                result = self._exec_abortable(wrapped, timeout, abort, into)
        except RestoreNotStopped:
            raise  # the pid file stays: the next run finds the restore by it
        except BaseException:
            self._exec(["rm", "-f", pid])
            raise
        self._exec(["rm", "-f", pid])
        return result

    def _exec_abortable(self, argv: list[str], timeout: float, abort: threading.Event,
                        into: str) -> subprocess.CompletedProcess:
        """``_exec(argv)`` in a thread; once ``abort`` is set, the restore into ``into`` is stopped (the exec's
        client cannot stop what it started) and OpsError raised when nothing of it runs any more."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self._exec(argv, timeout)
            except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=run, name="pitr-restore-exec", daemon=True).start()
        while not done.wait(0.1):
            if abort.is_set():
                deadline = time.monotonic() + self.STOP_WAIT
                while self._stop_restore(into) is False or not done.wait(0.2):
                    if time.monotonic() > deadline:
                        raise RestoreNotStopped(f"the pgBackRest restore into {into} did not stop",
                                                hint=f"its log: {self.log_hint}")
                raise OpsError("pgbackrest restore stopped")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _stop_restore(self, into: str) -> bool | None:
        """Stops the restore into ``into``: True once no process of it is left, None when none runs (not started, or
        over), False when some still runs after ~30 s.

        pgBackRest (its pid from the pid file) gets SIGTERM; its parent (the exec's ``timeout``) reaps it. After
        ~10 s its workers get SIGKILL while it still runs, then it does. A worker it leaves behind is reaped by the
        container's init (``ContainerSpec.init``), never by Postgres, which would take an unknown child's death for a
        crash of its own."""
        pid = f"{self.specs.PG_HOME}/{self.PIDFILE}"
        script = ('pat="--pg1-path=$2 "; p=$(cat "$1" 2>/dev/null); [ -n "$p" ] || exit 1; '
                  'tr "\\0" " " < "/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$pat" || exit 1; '
                  'kill -TERM "$p"; '
                  'left() { for d in /proc/[0-9]*; do [ "${d#/proc/}" = "$$" ] && continue; '
                  'tr "\\0" " " < "$d/cmdline" 2>/dev/null | grep -qF -- "$pat" && return 0; done; return 1; }; '
                  'i=0; while left; do i=$((i+1)); '
                  'if [ $i -eq 100 ]; then for d in /proc/[0-9]*; do '
                  '[ "$(cut -d" " -f4 "$d/stat" 2>/dev/null)" = "$p" ] && kill -KILL "${d#/proc/}"; done; '
                  'sleep 0.5; kill -KILL "$p"; fi; [ $i -ge 300 ] && exit 2; sleep 0.1; done')
        return {0: True, 1: None}.get(self._exec(["sh", "-c", script, "sh", pid, into], timeout=60).returncode, False)

    def prepare_repo(self) -> None:
        """A repository's bucket exists before the stanza is created in it; a volume's folder the container's start
        made ready."""
        if self.bucket is not None:
            from aixsss_ops.s3 import ensure_bucket

            ensure_bucket(*self.bucket)

    def config_problem(self) -> str | None:
        state = self.runtime.state("postgres")
        if state != "RUNNING":
            return f"the Postgres container is {state}"
        if self._exec(["test", "-s", self.specs.PGBACKREST_CONF], 20).returncode != 0:
            return (f"no pgBackRest config at {self.specs.PGBACKREST_CONF} in the Postgres container "
                    "(created before backup.pitr was on?)")
        return None

    def mkdir(self, path: PurePosixPath) -> None:
        r = self._exec(["mkdir", "-m", "0700", "--", str(path)])
        if r.returncode != 0:
            raise OpsError(f"mkdir {path} in the Postgres container failed: {r.stderr.strip()}")

    def exists(self, path: PurePosixPath) -> bool:
        return self._exec(["test", "-e", str(path)]).returncode == 0

    def rmtree(self, path: PurePosixPath) -> None:
        r = self._exec(["rm", "-rf", "--", str(path)], timeout=600)
        if r.returncode != 0:
            raise OpsError(f"removing {path} in the Postgres container failed: {r.stderr.strip()}")

    def _write_swap(self, moves: list[tuple[PurePosixPath, PurePosixPath]]) -> None:
        import io
        import tarfile
        import time

        c = self.runtime.find("postgres")
        if c is None:
            raise OpsError("the postgres container does not exist", hint="`aixsss-ops stack up`")
        data = "".join(f"{a} {b}\n" for a, b in moves).encode()
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(PurePosixPath(self.specs.PITR_SWAP).name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
        if not c.put_archive(str(PurePosixPath(self.specs.PITR_SWAP).parent), buf.getvalue()):
            raise OpsError("writing the folder moves into the Postgres container failed")

    def switch(self, runtime, moves: list[tuple[PurePosixPath, PurePosixPath]], strict: bool = True) -> None:
        """The moves written into the container, which makes them when it starts, before Postgres."""
        self._write_swap(moves)
        _stop_postgres(runtime, strict)
        runtime.start("postgres")

    def settle(self, runtime, kept: PurePosixPath, new: PurePosixPath) -> list[str]:
        """What a killed restore left: a container stopped in the middle starts (making the moves it was given);
        a pgBackRest restore into ``new`` still running in it (exec'd processes outlive the command) is stopped."""
        from aixsss_ops.poll import poll_until

        done = []
        if runtime.state("postgres") not in ("RUNNING", "STARTING"):
            runtime.start("postgres")
            done.append("started postgres")
        if not poll_until(lambda: self.runtime.state("postgres") == "RUNNING", 60, interval=0.2):
            raise OpsError("the Postgres container does not run", hint="`aixsss-ops stack logs postgres`")
        stopped = self._stop_restore(str(new))
        if stopped is False:
            raise OpsError(f"the pgBackRest restore into {new} left by the interrupted run does not stop",
                           hint=f"its log: {self.log_hint}")
        self._exec(["rm", "-f", f"{self.specs.PG_HOME}/{self.PIDFILE}"])
        if stopped:
            done.append("stopped the pgBackRest restore still running in the container")
        return done

    def repo_usage(self) -> tuple[str, int, int] | None:
        """(where, free bytes, total bytes) of the repository volume's file system; None for a bucket."""
        if self.bucket is not None:
            return None
        r = self._exec(["df", "-Pk", self.specs.PGBACKREST], 20)
        rows = r.stdout.strip().splitlines()
        if r.returncode != 0 or len(rows) < 2:
            return None
        f = rows[-1].split()
        return (f"volume {self.specs.volume_name(self.cfg, 'pgbackrest')}", int(f[3]) * 1024, int(f[1]) * 1024)


class Engine:
    """pgBackRest's commands against the stack's cluster, wherever pgBackRest runs (``site``: a ``HostSite`` for
    the local runtime, a ``ContainerSite`` for docker)."""

    def __init__(self, site: HostSite | ContainerSite):
        self.site = site
        self.stanza = site.stanza

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            abort: threading.Event | None = None) -> subprocess.CompletedProcess:
        """``abort``: an event that stops the command (a restore) when set."""
        r = self.site.run(args, timeout, abort) if abort is not None else self.site.run(args, timeout)
        if check and r.returncode != 0:
            lines = [ln for ln in (r.stderr or r.stdout).strip().splitlines() if ln.strip()]
            raise OpsError(f"pgbackrest {args[0]} failed (exit {r.returncode}): "
                           f"{lines[-1] if lines else 'no message'}", details="\n".join(lines[-20:]),
                           hint=f"its log: {self.site.log_hint}")
        return r

    def info(self) -> Info:
        r = self.run("info", "--output=json", timeout=60, check=False)
        if r.returncode != 0 and not r.stdout.strip():
            raise OpsError(f"pgbackrest info failed: {(r.stderr or '').strip().splitlines()[-1:] or r.returncode}")
        return parse_info(r.stdout, self.stanza)

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


def engine_for(cfg: OpsConfig, layout: Layout, write_config: bool = True) -> Engine | None:
    """pgBackRest against the embedded stack's cluster; None when ``backup.pitr`` is off. Local runtime:
    ``write_config`` writes pgbackrest.conf first (the same file ``stack up`` writes; doctor only reads it).
    Docker: pgBackRest in the Postgres container, whose config the container writes itself at start."""
    if not cfg.backup.pitr:
        return None
    if cfg.runtime == "docker":
        from aixsss_ops.runtime.docker import DockerRuntime

        return Engine(ContainerSite(cfg, DockerRuntime(cfg, layout), repo_bucket(cfg)))
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


def schedule_lines(exe: str, config: Path, full_calendar: str, incr_calendar: str) -> dict[str, str]:
    """systemd units and timers for the base backups, plus the cron equivalent of the default calendars."""
    units = {}
    for kind, cal in (("full", full_calendar), ("incr", incr_calendar)):
        name = f"aixsss-ops-backup-{kind}"
        units[f"{name}.service"] = (
            "[Unit]\nDescription=aixsss-ops physical base backup (" + kind + ")\n\n[Service]\nType=oneshot\n"
            f"ExecStart={exe} --config {config} --yes backup base --type {kind}\n")
        units[f"{name}.timer"] = (
            f"[Unit]\nDescription=aixsss-ops {kind} base backup\n\n[Timer]\nOnCalendar={cal}\nPersistent=true\n\n"
            "[Install]\nWantedBy=timers.target\n")
    return units
