"""What each service of the local engine is: its supervisord program and the ports it takes."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from aixsss_ops import appspec, sysbin
from aixsss_ops.config import OpsConfig
from aixsss_ops.context.layout import Layout
from aixsss_ops.fsutil import atomic_write
from aixsss_ops.output import is_secret_name, url_password
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import pgbackrest_repo
from aixsss_ops.runtime.base import COLORS, api_port, unit_name
from aixsss_ops.runtime.pg_cluster import Archiving, Cluster, drop_archive_conf, ensure_traversable, os_account
from aixsss_ops.runtime.supervisor import Program, envexec_argv


@dataclass
class ServiceDef:
    service: str
    color: str | None
    program: Program
    ports: dict[str, int]

    @property
    def unit(self) -> str:
        return unit_name(self.service, self.color)

    def port_labels(self) -> dict[str, int]:
        return self.ports


def cluster(cfg: OpsConfig, layout: Layout) -> Cluster:
    return Cluster(datadir=layout.pg_data, port=cfg.ports.postgres, host=cfg.host, os_user=cfg.postgres.os_user)


def archiving(cfg: OpsConfig, layout: Layout) -> Archiving | None:
    """pgBackRest's archiving of the cluster when ``backup.pitr`` is on (the stanza is the project's name)."""
    if not cfg.backup.pitr:
        return None
    return Archiving(root=layout.root / "pgbackrest", socket_dir=layout.pg_data.parent / "run", stanza=cfg.project,
                     timeout_s=max(1, round(cfg.backup.rpo_seconds)))


def s3_tls_port(cfg: OpsConfig) -> int | None:
    """The embedded store's HTTPS port on this host (``ports.s3_tls``), open when pgBackRest's repository is a
    bucket of it (``pgbackrest_repo.embedded_tls``)."""
    return cfg.ports.s3_tls if cfg.runtime == "local" and pgbackrest_repo.embedded_tls(cfg) else None


def s3_ca_for_pgbackrest(layout: Layout) -> Path:
    """A copy of the store's CA that the account pgBackRest runs as can read."""
    return layout.root / "pgbackrest" / "s3-ca.pem"


def pgbackrest_repo_options(cfg: OpsConfig, layout: Layout | None = None) -> dict[str, str]:
    """The repo1-* options: ``backup.dir``/.pgbackrest, or (``destination = "s3"``) a bucket
    (``pgbackrest_repo.s3_options``) reached at the store's HTTPS port of this host."""
    if cfg.backup.destination != "s3":
        return {"repo1-path": str(cfg.backup_dir / ".pgbackrest")}
    tls = s3_tls_port(cfg)
    endpoint = f"https://{cfg.host}:{tls}" if tls else f"http://{cfg.host}:{cfg.ports.s3}"
    ca = str(s3_ca_for_pgbackrest(layout)) if tls and layout is not None else None
    return pgbackrest_repo.s3_options(cfg, endpoint, ca)


def write_pgbackrest_conf(cfg: OpsConfig, layout: Layout) -> Archiving | None:
    """pgbackrest.conf under the state directory (0600, the postgres account's) and, for a local repository, its
    folder in ``backup.dir`` (``backup.dir`` itself made searchable, not readable, by that account)."""
    arch = archiving(cfg, layout)
    if arch is None:
        drop_archive_conf(layout.root / "pgbackrest")
        return None
    pg = cluster(cfg, layout)
    repo = pgbackrest_repo_options(cfg, layout)
    if "repo1-storage-ca-file" in repo:  # the embedded store's CA, readable by the account pgBackRest runs as
        ca = Path(repo["repo1-storage-ca-file"])
        ca.parent.mkdir(parents=True, exist_ok=True)
        text = pgbackrest_repo.ensure_tls(cfg, layout)["ca"].read_bytes()
        if not ca.exists() or ca.read_bytes() != text:
            atomic_write(ca, text, mode=0o644)
    if repo.get("repo1-type") != "s3":
        path = Path(repo["repo1-path"])
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        acct = os_account(pg.os_user)
        if acct:
            os.chown(path, acct.pw_uid, acct.pw_gid)
            ensure_traversable(path.parent)
    arch.prepare(pg, arch.render(pg, cfg.postgres.superuser, repo, cfg.backup.pitr_retention_days))
    return arch


def postgres(cfg: OpsConfig, layout: Layout) -> ServiceDef:
    prog = Program(
        "postgres",
        cluster(cfg, layout).server_argv(write_pgbackrest_conf(cfg, layout)),
        user=cfg.postgres.os_user,
        stopsignal="INT",
        stopwaitsecs=60,
        startsecs=2,
    )
    return ServiceDef("postgres", None, prog, {"postgres": cfg.ports.postgres})


def write_redis_conf(layout: Layout, password: str) -> Path:
    """The one setting kept out of the command line (``ps`` shows it): the password, in a 0600 config file."""
    path = layout.redis_dir / "redis.conf"
    atomic_write(path, f"requirepass {password}\n", mode=0o600)
    return path


def redis(cfg: OpsConfig, layout: Layout) -> ServiceDef:
    argv = [
        sysbin.find("redis-server"),
        str(layout.redis_dir / "redis.conf"),
        "--bind",
        cfg.host,
        "--port",
        str(cfg.ports.redis),
        "--dir",
        str(layout.redis_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--maxmemory",
        cfg.redis.maxmemory,
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "3600 1 300 100 60 10000",
        "--daemonize",
        "no",
        "--protected-mode",
        "yes",
    ]
    prog = Program("redis", argv, stopsignal="TERM", stopwaitsecs=30)
    return ServiceDef("redis", None, prog, {"redis": cfg.ports.redis})


def write_s3_identities(cfg: OpsConfig, layout: Layout) -> Path:
    ident = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": cfg.s3.access_key, "secretKey": cfg.s3.secret_key.get_secret_value()}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    atomic_write(layout.s3_identities, json.dumps(ident), mode=0o600)
    return layout.s3_identities


def s3(cfg: OpsConfig, layout: Layout) -> ServiceDef:
    p = cfg.ports
    argv = [
        sysbin.find("weed"),
        "server",
        f"-dir={layout.s3_dir / 'data'}",
        f"-ip={cfg.host}",
        f"-ip.bind={cfg.host}",
        f"-master.port={p.weed_master}",
        f"-master.port.grpc={p.weed_master_grpc}",
        f"-volume.port={p.weed_volume}",
        f"-volume.port.grpc={p.weed_volume_grpc}",
        f"-filer.port={p.weed_filer}",
        f"-filer.port.grpc={p.weed_filer_grpc}",
        "-s3",
        f"-s3.port={p.s3}",
        f"-s3.port.grpc={p.s3_grpc}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={layout.s3_identities}",
        "-volume.preStopSeconds=0",
        f"-master.volumeSizeLimitMB={cfg.s3.volume_size_limit_mb}",
        "-volume.max=0",
        "-metricsPort=0",
    ]
    tls = s3_tls_port(cfg)
    if tls:  # HTTPS beside the plain port, for pgBackRest's repository (s3_tls_port)
        files = pgbackrest_repo.ensure_tls(cfg, layout)
        argv += [f"-s3.port.https={tls}", f"-s3.cert.file={files['cert']}", f"-s3.key.file={files['key']}"]
    prog = Program("s3", argv, stopsignal="TERM", stopwaitsecs=45, startsecs=2)
    ports = {
        "s3": p.s3,
        "weed master": p.weed_master,
        "weed master grpc": p.weed_master_grpc,
        "weed volume": p.weed_volume,
        "weed volume grpc": p.weed_volume_grpc,
        "weed filer": p.weed_filer,
        "weed filer grpc": p.weed_filer_grpc,
        "s3 grpc": p.s3_grpc,
        **({"s3 tls": tls} if tls else {}),
    }
    return ServiceDef("s3", None, prog, ports)


def proxy(cfg: OpsConfig, layout: Layout) -> ServiceDef:
    """nginx, started through ``proxy.launch``: a start first ends what a SIGKILLed master of this proxy left
    (its workers keep the port), so supervisord's restart of it binds."""
    nginx_argv = [sysbin.find("nginx"), "-c", str(layout.nginx_conf), "-p", str(layout.nginx_dir), "-g", "daemon off;"]
    stale = [a for c in COLORS for a in ("--stale-socket", str(nginx.color_socket(layout.run_dir, c)))]
    argv = [sys.executable, "-m", "aixsss_ops.proxy.launch", "--pid-file", str(nginx.pid_file(layout.nginx_dir)),
            *stale, "--", *nginx_argv]
    prog = Program("proxy", argv, stopsignal="QUIT", stopwaitsecs=30)
    return ServiceDef("proxy", None, prog, {"proxy": cfg.ports.proxy})


def app_processes(cfg: OpsConfig, layout: Layout, color: str, source: Path, version: str) -> list[ServiceDef]:
    """The programs of ``color`` running the release at ``source``: one per process of the app description. The
    web build and every process folder must resolve inside the release (an OpsError before anything is defined)."""
    appspec.in_release(source, source / cfg.app.web_root, "web_root")
    return [app_process(cfg, layout, role, color, source, version) for role in appspec.roles(cfg)]


def app_process(cfg: OpsConfig, layout: Layout, role: str, color: str, source: Path, version: str) -> ServiceDef:
    spec = appspec.spec_of(cfg, role)

    def fill(text: str) -> str:
        return appspec.fill(text, release=source, color=color, version=version, host=cfg.host)

    overrides = {"APP_COLOR": color, "APP_VERSION": version, **{k: fill(v) for k, v in spec.env.items()}}
    ports = {}
    if spec.port_env:
        port = api_port(cfg, color)
        overrides[spec.port_env] = str(port)
        ports[f"{role} {color}"] = port
    if spec.socket_env:
        overrides[spec.socket_env] = str(layout.api_socket(color))
    env_file = appspec.env_file_of(role, spec)
    env_files = [layout.env_file(env_file)] if env_file else []
    # a value that looks secret (as ``config show`` masks it) goes in the program's own 0600 env file, never on the
    # command line or in supervisord's config
    secret = {k: v for k, v in overrides.items() if is_secret_name(k) or url_password(v)}
    secret_file = layout.supervisor / "env" / f"{unit_name(role, color)}.env"
    if secret:
        env_files.append(secret_file)
    plain = {k: v for k, v in overrides.items() if k not in secret}
    argv = envexec_argv(env_files, plain, [fill(a) for a in spec.command])
    # supervisord's start check: 1 s for a process whose readiness check proves more (an answer, a log line, a
    # Redis client), 2 s for one that can only keep running
    proven = spec.port_env or spec.ready.proves
    directory = appspec.in_release(source, source / fill(spec.cwd), f"{role}'s cwd")
    prog = Program(unit_name(role, color), argv, directory=directory,
                   stopsignal=spec.stop_signal, stopwaitsecs=int(spec.stop_timeout), startsecs=1 if proven else 2,
                   secret_env=secret, secret_env_file=secret_file)
    return ServiceDef(role, color, prog, ports)
