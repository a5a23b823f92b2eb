"""A private PostgreSQL cluster under the state directory (Debian's binaries)."""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aixsss_ops import sysbin
from aixsss_ops.errors import OpsError, UsageError


def os_account(name: str) -> pwd.struct_passwd | None:
    """The unprivileged account that must own and run the cluster when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise UsageError(
            f"PostgreSQL refuses to run as root and the account '{name}' does not exist",
            hint="install postgresql (it creates the 'postgres' account) or set postgres.os_user in ops.toml",
        ) from None


def ensure_traversable(path: Path) -> None:
    """Make every parent of ``path`` searchable by others, so the postgres account can reach its data."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if not st.st_mode & 0o001:
            if st.st_uid != os.geteuid():
                raise UsageError(f"{parent} is not searchable by the postgres account (mode {oct(st.st_mode)})")
            os.chmod(parent, st.st_mode | 0o011)


@dataclass
class Cluster:
    datadir: Path
    port: int
    host: str
    os_user: str

    @property
    def initialized(self) -> bool:
        return (self.datadir / "PG_VERSION").exists()

    def _run_as(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        acct = os_account(self.os_user)
        kwargs = {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []} if acct else {}
        return subprocess.run(argv, capture_output=True, text=True, **kwargs, **kw)

    def init(self, superuser: str, password: str) -> None:
        """``initdb`` with scram auth over TCP only; idempotent."""
        if self.initialized:
            return
        acct = os_account(self.os_user)
        self.datadir.mkdir(parents=True, exist_ok=True)
        pwfile = self.datadir.parent / ".pgpass.init"
        pwfile.write_text(password + "\n")
        os.chmod(pwfile, 0o600)
        if acct:
            ensure_traversable(self.datadir.parent)
            for p in (self.datadir, pwfile):
                os.chown(p, acct.pw_uid, acct.pw_gid)
        os.chmod(self.datadir, 0o700)
        try:
            r = self._run_as(
                [
                    sysbin.find("initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    superuser,
                    "--pwfile",
                    str(pwfile),
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            raise OpsError(f"initdb failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        conf = self.datadir / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# aixsss-ops\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                "unix_socket_directories = ''\n"
                "max_connections = 200\n"
                "logging_collector = off\n"
            )

    def server_argv(self) -> list[str]:
        # port and listen address on the command line so a changed ops.toml applies on restart
        return [
            sysbin.find("postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            "unix_socket_directories=",
        ]
