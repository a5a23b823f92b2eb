"""supervisord as the process supervisor of the local runtime, controlled over its XML-RPC API.

One supervisord per state directory. Each service is a program in its own include file;
``apply()`` does what ``supervisorctl update`` does (reloadConfig + add/remove groups).

A supervisord that was killed (SIGKILL) leaves its programs running, reparented to init: ``orphans()`` finds them
(the members of its session that are this state directory's) and ``stop_orphans()`` stops them as supervisord would
have.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aixsss_ops import sysbin
from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write
from aixsss_ops.poll import poll_until

RPC_TIMEOUT = 30.0
_SUN_PATH_MAX = 107


@dataclass
class Program:
    name: str
    argv: list[str]
    directory: Path | None = None
    user: str | None = None
    stopsignal: str = "TERM"
    stopwaitsecs: int = 20
    startsecs: int = 1
    autorestart: str = "unexpected"
    exitcodes: str = "0"
    environment: dict[str, str] = field(default_factory=dict)
    # variables kept out of the command line and this config: written 0600 to ``secret_env_file``, which ``argv``
    # then hands to envexec (``--env-file``); with none, that file is removed
    secret_env: dict[str, str] = field(default_factory=dict)
    secret_env_file: Path | None = None

    def render(self, logfile: Path) -> str:
        """The program's section; ``%`` doubled wherever supervisord expands ``%(name)s``."""

        def esc(value: object) -> str:
            return str(value).replace("%", "%%")

        lines = [
            f"[program:{self.name}]",
            f"command={esc(shlex.join(self.argv))}",
            "autostart=false",
            f"autorestart={self.autorestart}",
            f"exitcodes={self.exitcodes}",
            f"startsecs={self.startsecs}",
            "startretries=3",
            f"stopsignal={self.stopsignal}",
            f"stopwaitsecs={self.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={esc(logfile)}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
        ]
        if self.directory:
            lines.append(f"directory={esc(self.directory)}")
        if self.user and os.geteuid() == 0:
            lines.append(f"user={self.user}")
        if self.environment:
            # values here are never secrets (those come from env files via envexec); quoted for supervisor's parser
            env = ",".join(f'{k}="{esc(v)}"' for k, v in self.environment.items())
            lines.append(f"environment={env}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Orphan:
    """A process a killed supervisord of this state directory started (or one of its children) that still runs."""

    pid: int
    pgid: int  # the process group supervisord made for its program (its pid as spawned)
    program: str | None  # the program, as supervisord's log or the process's environment names it
    command: str


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__()
        self.socket_path = socket_path
        self.timeout = timeout

    def make_connection(self, host):
        import http.client

        path, timeout = self.socket_path, self.timeout

        class Conn(http.client.HTTPConnection):
            def connect(self):
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout)
                self.sock.connect(path)

        return Conn("localhost")


class Supervisor:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "supervisord.conf"
        self.include_dir = root / "programs"
        self.log_dir = root.parent / "logs"
        self.sock = root / "supervisor.sock"
        self.pidfile = root / "supervisord.pid"
        if len(str(self.sock)) > _SUN_PATH_MAX:
            raise OpsError(f"state directory path too long for a unix socket: {self.sock}")

    def rpc(self, timeout: float = RPC_TIMEOUT):
        return xmlrpc.client.ServerProxy("http://localhost", transport=_UnixTransport(str(self.sock), timeout))

    def logfile(self, program: str) -> Path:
        return self.log_dir / f"{program}.log"

    def is_running(self) -> bool:
        if not self.sock.exists():
            return False
        try:
            return self.rpc(timeout=3).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def ensure_started(self, timeout: float = 15.0) -> bool:
        """Start supervisord for this state dir when it is not running; True when it was started now."""
        if self.is_running():
            return False
        for d in (self.root, self.include_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        atomic_write(self.conf, self._render_main(), mode=0o600)
        r = subprocess.run([sysbin.find("supervisord"), "-c", str(self.conf)], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise OpsError(f"supervisord failed to start: {(r.stderr or r.stdout).strip()[-300:]}")
        if not poll_until(self.is_running, timeout):
            raise OpsError(f"supervisord did not answer on {self.sock} within {timeout:.0f}s",
                           details=self._tail(self.log_dir / "supervisord.log"))
        return True

    def _render_main(self) -> str:
        return "\n".join(
            [
                "[unix_http_server]",
                f"file={self.sock}",
                "chmod=0700",
                "",
                "[supervisord]",
                f"logfile={self.log_dir / 'supervisord.log'}",
                f"pidfile={self.pidfile}",
                f"directory={self.root}",
                "logfile_maxbytes=10MB",
                "loglevel=info",
                "minfds=1024",
                "umask=077",  # what the services write (logs, Redis's AOF, object data) is the owner's alone
                *(["user=root"] if os.geteuid() == 0 else []),
                "",
                "[rpcinterface:supervisor]",
                "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
                "",
                "[include]",
                # relative to this file's folder: supervisord splits the value at whitespace (a state directory
                # with a space)
                f"files={self.include_dir.relative_to(self.root)}/*.conf",
                "",
            ]
        )

    def write_program(self, program: Program) -> None:
        if program.secret_env_file is not None and program.secret_env:
            from aixsss_ops import envfile

            program.secret_env_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            envfile.write(program.secret_env_file, program.secret_env,
                          header=f"secret variables of {program.name} (ops.toml app.processes): envexec reads them")
        elif program.secret_env_file is not None:
            program.secret_env_file.unlink(missing_ok=True)
        atomic_write(self.include_dir / f"{program.name}.conf", program.render(self.logfile(program.name)), mode=0o600)

    def apply(self) -> dict[str, list[str]]:
        """Make supervisord's running set match the include files (like ``supervisorctl update``)."""
        s = self.rpc().supervisor
        added, changed, removed = s.reloadConfig()[0]
        for name in removed + changed:
            with contextlib.suppress(xmlrpc.client.Fault):
                s.stopProcessGroup(name, True)
            s.removeProcessGroup(name)
        for name in added + changed:
            s.addProcessGroup(name)
        return {"added": added, "changed": changed, "removed": removed}

    def info(self, name: str) -> dict | None:
        try:
            return self.rpc().supervisor.getProcessInfo(name)
        except (xmlrpc.client.Fault, OSError):
            return None

    def all_info(self) -> dict[str, dict]:
        if not self.is_running():
            return {}
        return {p["name"]: p for p in self.rpc().supervisor.getAllProcessInfo()}

    def start(self, name: str) -> None:
        try:
            self.rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as e:
            if "ALREADY_STARTED" not in e.faultString:
                raise OpsError(f"supervisor could not start {name}: {e.faultString}") from None

    def stop(self, name: str, wait: bool = True) -> None:
        try:
            self.rpc(timeout=RPC_TIMEOUT + 60).supervisor.stopProcess(name, wait)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString and "BAD_NAME" not in e.faultString:
                raise OpsError(f"supervisor could not stop {name}: {e.faultString}") from None

    def signal(self, name: str, sig: str) -> None:
        try:
            self.rpc().supervisor.signalProcess(name, sig)
        except xmlrpc.client.Fault as e:
            raise OpsError(f"supervisor could not signal {name}: {e.faultString}") from None

    def shutdown(self, timeout: float = 60.0) -> None:
        if not self.is_running():
            return
        pid = _read_pid(self.pidfile)
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            self.rpc().supervisor.shutdown()
        if pid:
            poll_until(lambda: not _alive(pid), timeout)

    @staticmethod
    def _tail(path: Path, lines: int = 20) -> str:
        return tail(path, lines)

    # -- what a killed supervisord left --
    def killed(self) -> int | None:
        """The pid of this state directory's supervisord when it is gone without a shutdown: its pid file remains and
        names no live process (a clean shutdown removes the file; a zombie is dead). None otherwise."""
        pid = _read_pid(self.pidfile)
        if pid is None:
            return None
        st = proc_stat(pid)
        return pid if st is None or st.state == "Z" else None

    def orphans(self) -> list[Orphan]:
        """The processes a killed supervisord of this state directory left running: the members of its session
        (its programs run in the session supervisord leads, each in a process group of its own; the kernel keeps the
        session id from being reused while a member lives) whose environment names this supervisord's socket or whose
        working directory is in this state directory. Empty while it runs."""
        sid = self.killed()
        if sid is None:
            return []
        state = self.root.parent.resolve()
        url = f"unix://{self.sock}"
        spawned = self._spawned()
        out = []
        for pid in _pids():
            st = proc_stat(pid)
            if st is None or st.session != sid or st.state == "Z":
                continue
            env = _environ(pid)
            cwd = _readlink(f"/proc/{pid}/cwd")
            if env.get("SUPERVISOR_SERVER_URL") != url and not (cwd and _within(Path(cwd), state)):
                continue
            program = env.get("SUPERVISOR_PROCESS_NAME") or spawned.get(st.pgid)
            out.append(Orphan(pid, st.pgid, program, _cmdline(pid)))
        return out

    def _spawned(self) -> dict[int, str]:
        """pid -> program, from supervisord's log lines ``spawned: 'NAME' with pid N`` (the rotated log first)."""
        out: dict[int, str] = {}
        base = self.log_dir / "supervisord.log"
        for path in (base.with_name(base.name + ".1"), base):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for m in _SPAWNED.finditer(text):
                out[int(m.group(2))] = m.group(1)
        return out

    def _stop_settings(self, program: str | None) -> tuple[int, int]:
        """(stop signal, seconds to wait) of ``program`` as its include file says (TERM, 10 when unknown)."""
        sig, wait = "TERM", 10
        if program:
            cp = configparser.ConfigParser(interpolation=None)
            with contextlib.suppress(OSError, KeyError, ValueError, configparser.Error):
                cp.read(self.include_dir / f"{program}.conf")
                sec = cp[f"program:{program}"]
                sig, wait = sec.get("stopsignal", sig), int(sec.get("stopwaitsecs", wait))
        return int(getattr(signal, f"SIG{sig.upper()}", signal.SIGTERM)), wait

    def stop_orphans(self, order: Sequence[Sequence[str]], say: Callable[[str], None] = lambda _m: None
                     ) -> tuple[list[str], list[str]]:
        """Stop what a killed supervisord left, as it stops a program (stopasgroup, killasgroup): the program's stop
        signal to its process group, SIGKILL to the group once its ``stopwaitsecs`` passed; group after group of
        ``order`` (programs it does not name come last). Once nothing is left, the dead supervisord's socket and pid
        file are removed. Returns (the programs stopped, those still running)."""
        found = self.orphans()
        groups: dict[str, set[int]] = {}
        for o in found:
            groups.setdefault(o.program or f"pid {o.pgid}", set()).add(o.pgid)
        named = [n for step in order for n in step]
        steps = [[n for n in step if n in groups] for step in order]
        steps.append(sorted(n for n in groups if n not in named))
        stopped: list[str] = []
        for step in steps:
            if not step:
                continue
            waits = {}
            for name in step:
                sig, wait = self._stop_settings(name)
                say(f"stopping orphaned {name} (pgid {', '.join(map(str, sorted(groups[name])))})")
                for pgid in groups[name]:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, sig)
                waits[name] = time.monotonic() + wait
            for name in step:
                pgids = groups[name]
                if not _wait_groups_gone(pgids, waits[name] - time.monotonic()):
                    say(f"{name} did not stop within its stop wait: SIGKILL")
                    for pgid in pgids:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pgid, signal.SIGKILL)
                    _wait_groups_gone(pgids, 10)
                stopped.append(name)
        left = sorted({o.program or f"pid {o.pgid}" for o in self.orphans()})
        if not left and self.killed() is not None:
            self.sock.unlink(missing_ok=True)
            self.pidfile.unlink(missing_ok=True)
        return [n for n in stopped if n not in left], left


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


_SPAWNED = re.compile(r"spawned: '([^']+)' with pid (\d+)")


@dataclass(frozen=True)
class ProcStat:
    state: str
    ppid: int
    pgid: int
    session: int


def proc_stat(pid: int) -> ProcStat | None:
    """The fields of ``/proc/PID/stat`` used here (None: no such process). The command name, in parentheses, may
    hold spaces and parentheses itself: the fields start after the last ``)``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rpartition(")")[2].split()
    try:
        return ProcStat(f[0], int(f[1]), int(f[2]), int(f[3]))
    except (IndexError, ValueError):
        return None


def _pids() -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit()]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, sep, v in pairs if sep}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (a zombie no longer does)."""
    return any((st := proc_stat(pid)) is not None and st.pgid == pgid and st.state != "Z" for pid in _pids())


def _wait_groups_gone(pgids: set[int], timeout: float) -> bool:
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        if not any(_group_alive(g) for g in pgids):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def envexec_argv(env_files: list[Path], overrides: dict[str, str], argv: list[str]) -> list[str]:
    """Run ``argv`` with variables from env files, so secrets never enter supervisord's config; ``overrides`` go on
    the command line: never a secret (``output.is_secret_name``, a URL with a password): those go in a file."""
    cmd = [sys.executable, "-m", "aixsss_ops.runtime.envexec"]
    for f in env_files:
        cmd += ["--env-file", str(f)]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + ["--", *argv]
