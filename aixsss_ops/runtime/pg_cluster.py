"""A private PostgreSQL cluster under the state directory (Debian's binaries)."""

from __future__ import annotations

import os
import pwd
import shlex
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

    def as_account(self) -> dict:
        """The ``subprocess`` arguments that run a command as the cluster's account (none when we are not root)."""
        acct = os_account(self.os_user)
        return {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []} if acct else {}

    def _run_as(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, **self.as_account(), **kw)

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

    def server_argv(self, archiving: Archiving | None = None) -> list[str]:
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
            f"unix_socket_directories={archiving.socket_dir if archiving else ''}",
            *(archiving.settings() if archiving else []),
        ]


@dataclass(frozen=True)
class Archiving:
    """Continuous WAL archiving of the cluster by pgBackRest (``backup.pitr``): its config file, the stanza, the
    ``archive_timeout`` that closes the WAL segment of an idle database, and the unix socket directory pgBackRest
    connects through (it speaks to a local cluster over a socket only; the directory is the postgres account's,
    0700)."""

    root: Path  # pgbackrest.conf, spool/, lock/, log/
    socket_dir: Path
    stanza: str
    timeout_s: int

    @property
    def config(self) -> Path:
        return self.root / "pgbackrest.conf"

    def command(self, *args: str) -> list[str]:
        return [sysbin.find("pgbackrest"), f"--config={self.config}", f"--stanza={self.stanza}", *args]

    @property
    def include_file(self) -> Path:
        """Holds ``archive_command``, beside the cluster's own settings rather than on the server's command line;
        the cluster's postgresql.conf includes it (``include_if_exists``: absent when archiving is off)."""
        return self.root / "archive.conf"

    def settings(self) -> list[str]:
        return ["-c", "wal_level=replica", "-c", "archive_mode=on", "-c", f"archive_timeout={self.timeout_s}"]

    def include_text(self) -> str:
        push = " ".join(shlex.quote(a) for a in self.command("archive-push")) + " %p"
        return "# written by aixsss-ops (backup.pitr)\narchive_command = '" + push.replace("'", "''") + "'\n"

    def render(self, cluster: Cluster, superuser: str, repo: dict[str, str], retention_days: int) -> str:
        """pgbackrest.conf: the repository (``repo``: its repo1-* options), retention in days, async archiving with
        the spool, lock and log folders under ``root``; the cluster as the one pg1 of the stanza."""
        glob = {
            **repo,
            "repo1-retention-full-type": "time",
            "repo1-retention-full": str(retention_days),
            "archive-async": "y",
            "spool-path": str(self.root / "spool"),
            "lock-path": str(self.root / "lock"),
            "log-path": str(self.root / "log"),
            "log-level-console": "warn",
            "log-level-stderr": "off",
            "log-level-file": "info",
            "start-fast": "y",
            "compress-type": "lz4",
            "process-max": "2",
        }
        stanza = {"pg1-path": str(cluster.datadir), "pg1-port": str(cluster.port),
                  "pg1-socket-path": str(self.socket_dir), "pg1-user": superuser}
        lines = ["[global]", *(f"{k}={v}" for k, v in glob.items()), "", f"[{self.stanza}]",
                 *(f"{k}={v}" for k, v in stanza.items())]
        return "\n".join(lines) + "\n"

    def prepare(self, cluster: Cluster, text: str) -> None:
        """Write the config (0600: it may hold S3 keys) and make every folder pgBackRest and the socket need, all the
        postgres account's."""
        from aixsss_ops.fsutil import atomic_write

        acct = os_account(cluster.os_user)
        for d in (self.root, self.root / "spool", self.root / "lock", self.root / "log", self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
            if acct:
                os.chown(d, acct.pw_uid, acct.pw_gid)
        for path, content in ((self.config, text), (self.include_file, self.include_text())):
            if path.exists() and path.read_text() == content:
                continue  # unchanged: not even a moment with the file the running archiver reads owned by another
            atomic_write(path, content, mode=0o600)
            if acct:
                os.chown(path, acct.pw_uid, acct.pw_gid)
        if acct:
            ensure_traversable(self.root.parent)
        include_archive_conf(cluster, self.include_file)


def include_archive_conf(cluster: Cluster, path: Path) -> None:
    """postgresql.conf includes ``path`` when it exists (a line appended once; a restored cluster has it too)."""
    conf = cluster.datadir / "postgresql.conf"
    line = f"include_if_exists = '{path}'"
    if conf.exists() and line not in conf.read_text():
        with conf.open("a") as f:
            f.write(f"\n# aixsss-ops: WAL archiving (backup.pitr)\n{line}\n")


def drop_archive_conf(root: Path) -> None:
    """Archiving off: the included file goes (postgresql.conf's include_if_exists then includes nothing)."""
    (root / "archive.conf").unlink(missing_ok=True)
