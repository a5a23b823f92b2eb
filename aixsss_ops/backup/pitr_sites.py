"""Where pgBackRest runs for ``backup.pitr``: ``HostSite``, a subprocess of this machine as the cluster's account
(the local runtime), and ``ContainerSite``, an exec in the Postgres container (docker, swarm). A site runs pgBackRest's
commands (a restore stoppable by an event), makes and removes folders, swaps the restored data folder in, and
settles what an interrupted restore left."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from aixsss_ops.config import OpsConfig
from aixsss_ops.errors import OpsError, UsageError
from aixsss_ops.procutil import popen_group
from aixsss_ops.runtime.pg_cluster import Archiving, Cluster, os_account


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
        # in a process group of its own whose leader kills it when this process dies (even of SIGKILL): a killed
        # command leaves none of pgBackRest's worker processes writing; stopping it (an abort, a timeout) stops them
        # too, before the caller removes the folder they write into
        acct = self.cluster.as_account()
        proc = popen_group(argv, user=acct.get("user"), group=acct.get("group"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    out, err = proc.communicate(timeout=0.1)
                    return subprocess.CompletedProcess(argv, proc.returncode, out, err)
                except subprocess.TimeoutExpired:
                    if abort is not None and abort.is_set():
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
    """Where pgBackRest runs for the docker and swarm runtimes: inside the Postgres container (swarm: the replica of
    the Postgres service, on the node of the engine aixsss-ops talks to, which the runtime's exec requires), through
    the runtime's exec (as the postgres account), with the config the container writes at start
    (docker_specs.postgres, which the swarm's service is made from). Folders are paths inside the container; the
    live data folder is swapped by the container itself before Postgres starts (``docker_specs.PITR_SWAP``, in the
    pgdata volume): the file with the moves is written into the newest container of the service whatever its
    state (swarm: one of this node's, every one mounting the same volume), and the next one to start makes them."""

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
        if state not in ("RUNNING", "STARTING"):
            return f"the Postgres container is {state}"
        try:
            found = self._exec(["test", "-s", self.specs.PGBACKREST_CONF], 20).returncode == 0
        except UsageError:
            raise
        except OpsError:
            # STARTING: no container to exec in yet; on swarm also a running replica whose health check has not
            # passed yet (Postgres may answer already: a restore returns once it has promoted)
            if state == "STARTING":
                return "the Postgres container is STARTING"
            raise
        if not found:
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

        # any state (a stopped container takes files too): on swarm, ``find`` names only a running replica, and
        # the restored cluster's that does not come up may be between two of Swarm's restarts
        found = self.runtime.containers("postgres")
        if not found:
            raise OpsError("the postgres container does not exist", hint="`aixsss-ops stack up`")
        c = max(found, key=lambda c: c.attrs.get("Created", ""))
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
