"""supervisord as the process supervisor of the local runtime, controlled over its XML-RPC API.

One supervisord per state directory. Each service is a program in its own include file;
``apply()`` does what ``supervisorctl update`` does (reloadConfig + add/remove groups).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import socket
import subprocess
import sys
import xmlrpc.client
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
