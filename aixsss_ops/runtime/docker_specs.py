"""What each container of the docker runtime is, as plain data: the runtime creates containers from these specs
and ``compose render`` writes compose files from the same specs, so the two cannot drift apart.

No secret of the stack is ever part of a container's definition (environment, command, labels): a spec names its
secrets as files under /run/secrets (``secrets``: the service's env file, or one value such as the Postgres password), 0400
and owned by the container's user. The runtime writes them into the created container before it starts it
(``put_archive``); compose mounts them from its ``secrets:`` section. The app containers start through
``aixsss_ops.runtime.envexec``, which reads the env file and execs, as on the local runtime. A per-process ``env``
value of ops.toml that looks secret (a secret-like name, or a URL with a password: what ``config show`` masks) is in
the container's environment, which envexec lays over the env file: never on its command line, where ``ps`` on the
host would show it.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aixsss_ops import appspec
from aixsss_ops.config import OpsConfig
from aixsss_ops.output import is_secret_name, url_password
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime import pgbackrest_repo
from aixsss_ops.runtime.base import COLORS, api_port, unit_name

RUN = Path("/run/aixsss")  # the shared volume: api sockets, web builds, the live symlink; nginx's prefix
PROXY_CONF = "/etc/nginx/aixsss.conf"  # written by the proxy container from its NGINX_CONF at start
SECRETS = Path("/run/secrets")  # where a container finds its secret files (compose's place for them too)
PG_DATA = "/var/lib/postgresql/data"
PORTS = {"postgres": 5432, "redis": 6379, "s3": 8333, "s3_tls": 8443, "proxy": 80, "api": 3001}
VOLUMES = ("pgdata", "redis", "s3", "run")
SECRET_VARS = ("POSTGRES_SUPERUSER_PASSWORD", "REDIS_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY")
DOCKER_DNS = "127.0.0.11"  # the engine's resolver inside every container of a user-defined network
APP_UID = 10001  # the unprivileged account of the app containers (created in the runtime image as ``aixsss``)
APP_USER = f"{APP_UID}:{APP_UID}"


@dataclass
class ContainerSpec:
    service: str
    color: str | None
    image: str
    command: list[str]
    user: str | None = None
    working_dir: str | None = None
    environment: dict[str, str] = field(default_factory=dict)  # a secret only as app_process puts one (see above)
    # file name under SECRETS -> ("env_file", "api"|"worker"), ("var", one of SECRET_VARS), ("tls", "cert"|"key"|"ca":
    # the embedded store's HTTPS certificate, pgbackrest_repo.ensure_tls) or ("pgbackrest", "conf": pgbackrest_conf)
    secrets: dict[str, tuple[str, str]] = field(default_factory=dict)
    ports: list[tuple[str, int, int]] = field(default_factory=list)  # (host ip, host port, container port)
    volumes: dict[str, str] = field(default_factory=dict)  # volume key (VOLUMES) -> mount point
    healthcheck: list[str] | None = None
    restart: str = "unless-stopped"
    memory: str = ""
    cpus: float = 0.0
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 30
    # the engine's init (tini) as the container's first process: it reaps the orphans of commands exec'd in the
    # container, which the service itself as first process would inherit (Postgres takes the death of an unknown
    # child by a signal for a crash of its own: every session ends, crash recovery)
    init: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    version: str | None = None

    @property
    def unit(self) -> str:
        return unit_name(self.service, self.color)

    def port_labels(self) -> dict[str, int]:
        return {(self.unit if self.service != "api" else f"api {self.color}"): hp for _ip, hp, _cp in self.ports}

    def digest(self, secrets_mac: str = "") -> str:
        """Changes whenever the container would be created differently. ``secrets_mac`` stands for the contents of
        its secret files: a keyed hash the runtime computes (runtime/docker.py), so the label reveals nothing."""
        data = {**asdict(self), "secrets_mac": secrets_mac}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def network_name(cfg: OpsConfig) -> str:
    return cfg.docker.network or cfg.project


def container_name(cfg: OpsConfig, unit: str) -> str:
    return f"{cfg.project}-{unit}"


def volume_name(cfg: OpsConfig, key: str) -> str:
    return f"{cfg.project}-{key}"


def api_socket(color: str) -> Path:
    return RUN / "sock" / f"api-{color}.sock"


def _sh(script: str) -> list[str]:
    return ["sh", "-ec", script.strip()]


# point-in-time recovery (backup.pitr) in the Postgres container: pgBackRest runs there, its repository in a volume
PG_HOME = str(Path(PG_DATA).parent)  # the pgdata volume: the live data folder, restored and kept ones beside it
PG_SOCKETS = "/var/run/postgresql"  # the server's unix socket (pgBackRest reaches a local cluster through it only)
PGBACKREST = "/var/lib/pgbackrest"  # the pgbackrest volume: config, repository, spool, log, lock (postgres's)
PGBACKREST_CONF = f"{PGBACKREST}/pgbackrest.conf"
PITR_SWAP = f"{PG_HOME}/pitr-swap"  # folder moves ("from to" lines) the container makes before Postgres starts


def pgbackrest_archiving(cfg: OpsConfig):
    """pgBackRest's archiving of the container's cluster (``backup.pitr``; None when off): the stanza is the
    project's name; the repository is always the ``<project>-pgbackrest`` volume (local to the engine)."""
    from aixsss_ops.runtime.pg_cluster import Archiving, Cluster

    if not cfg.backup.pitr:
        return None
    arch = Archiving(root=Path(PGBACKREST), socket_dir=Path(PG_SOCKETS), stanza=cfg.project,
                     timeout_s=max(1, round(cfg.backup.rpo_seconds)))
    cluster = Cluster(datadir=Path(PG_DATA), port=PORTS["postgres"], host="", os_user="postgres")
    return arch, cluster


def pgbackrest_conf(cfg: OpsConfig) -> str:
    """pgbackrest.conf of the container, given to it as a secret file (a repository in a bucket puts the store's
    keys in it): the repository is the pgbackrest volume, or with ``destination = "s3"`` a bucket
    (``pgbackrest_repo.s3_options``), the embedded store's reached at its HTTPS port on the project network with the
    CA in ``s3_ca``. The superuser connects through the unix socket, trusted inside the container."""
    arch, cluster = pgbackrest_archiving(cfg)
    if cfg.backup.destination == "s3":
        repo = pgbackrest_repo.s3_options(cfg, f"https://{pgbackrest_repo.NETWORK_NAME}:{PORTS['s3_tls']}",
                                          str(SECRETS / "s3_ca"))
    else:
        repo = {"repo1-path": f"{PGBACKREST}/repo"}
    return arch.render(cluster, cfg.postgres.superuser, repo, cfg.backup.pitr_retention_days)


def pgbackrest_command(cfg: OpsConfig, *args: str) -> list[str]:
    """pgBackRest with the container's config and the stanza (run inside the Postgres container)."""
    return ["pgbackrest", f"--config={PGBACKREST_CONF}", f"--stanza={cfg.project}", *args]


def _pitr_script(cfg: OpsConfig) -> tuple[str, str]:
    """(what runs before Postgres, its extra arguments) with ``backup.pitr``: the folder moves a point-in-time
    restore asked for (each ``from to`` made once, whatever was already done: a start killed halfway repeats
    it) and then the archive spool emptied (the replaced cluster's acknowledgements), pgBackRest's folders and
    config, and WAL archiving through it."""
    pitr = cfg.backup.pitr and pgbackrest_archiving(cfg)
    if not pitr:
        return "", ""
    arch, _cluster = pitr
    folders = " ".join(f"{PGBACKREST}/{d}" for d in ("repo", "spool", "log", "lock"))
    push = shlex.join(pgbackrest_command(cfg, "archive-push")) + " %p"
    before = f"""
if [ -f {PITR_SWAP} ]; then
  while read -r from to; do
    if [ -e "$from" ] && [ ! -e "$to" ]; then mv -T -- "$from" "$to"; fi
  done < {PITR_SWAP}
  rm -rf {PGBACKREST}/spool/archive
  rm -f {PITR_SWAP}
fi
umask 077
mkdir -p {folders}
cat {SECRETS / "pgbackrest_conf"} > {PGBACKREST_CONF}.tmp && mv {PGBACKREST_CONF}.tmp {PGBACKREST_CONF}
umask 022
"""
    args = " ".join(shlex.quote(a) for a in arch.settings()) + " -c " + shlex.quote(f"archive_command={push}")
    return before, " " + args


def postgres(cfg: OpsConfig) -> ContainerSpec:
    before, archive_args = _pitr_script(cfg)
    script = f"""{before}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile={SECRETS / "postgres_password"} --auth-host=scram-sha-256 \\
    --auth-local=trust -E UTF8 --locale=C.UTF-8 >/dev/null
  echo 'host all all all scram-sha-256' >> "$PGDATA/pg_hba.conf"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c port={PORTS["postgres"]} -c max_connections=200{archive_args}
"""
    environment = {"PGDATA": PG_DATA, "POSTGRES_USER": cfg.postgres.superuser}
    volumes = {"pgdata": PG_HOME}
    secrets = {"postgres_password": ("var", "POSTGRES_SUPERUSER_PASSWORD")}
    if before:
        volumes["pgbackrest"] = PGBACKREST
        secrets["pgbackrest_conf"] = ("pgbackrest", "conf")
        if pgbackrest_repo.embedded_tls(cfg):
            secrets["s3_ca"] = ("tls", "ca")
    return ContainerSpec(
        "postgres",
        None,
        cfg.docker.postgres_image,
        _sh(script),
        user="postgres",
        environment=environment,
        secrets=secrets,
        ports=[(cfg.host, cfg.ports.postgres, PORTS["postgres"])],
        volumes=volumes,
        healthcheck=["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(PORTS["postgres"])],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
        stop_signal="SIGINT",
        stop_timeout=60,
        init=True,  # pgBackRest runs in it through exec (restore, check, archive-get)
    )


def redis(cfg: OpsConfig) -> ContainerSpec:
    # the password reaches redis-server as its config on stdin (a here-document), never on a command line
    secret = SECRETS / "redis_password"
    script = f"""
exec redis-server - --bind 0.0.0.0 --port {PORTS["redis"]} --dir /var/lib/redis --appendonly yes \\
  --appendfsync everysec --maxmemory {shlex.quote(cfg.redis.maxmemory)} --maxmemory-policy noeviction \\
  --save '3600 1 300 100 60 10000' --daemonize no --protected-mode no <<END
requirepass $(cat {secret})
END
"""
    ping = f'REDISCLI_AUTH="$(cat {secret})" redis-cli -p {PORTS["redis"]} ping | grep -q PONG'
    return ContainerSpec(
        "redis",
        None,
        cfg.docker.redis_image,
        _sh(script),
        user="redis",
        secrets={"redis_password": ("var", "REDIS_PASSWORD")},
        ports=[(cfg.host, cfg.ports.redis, PORTS["redis"])],
        volumes={"redis": "/var/lib/redis"},
        healthcheck=["CMD", "sh", "-c", ping],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
    )


# the identities file weed reads, made from the two secret files (argv: access key file, secret key file)
_S3_IDENTITIES = """
import json, sys
access, secret = (open(p, encoding="utf-8").read().rstrip("\\r\\n") for p in sys.argv[1:3])
creds = [{"accessKey": access, "secretKey": secret}]
actions = ["Admin", "Read", "Write", "List", "Tagging"]
json.dump({"identities": [{"name": "admin", "credentials": creds, "actions": actions}]}, sys.stdout)
"""


def s3(cfg: OpsConfig) -> ContainerSpec:
    weed = [
        "weed", "server", "-dir=/data", "-ip=s3", "-ip.bind=0.0.0.0", "-s3", f"-s3.port={PORTS['s3']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=/tmp/s3.json", "-volume.preStopSeconds=0",
        f"-master.volumeSizeLimitMB={cfg.s3.volume_size_limit_mb}", "-volume.max=0", "-metricsPort=0",
    ]  # fmt: skip
    keys = [str(SECRETS / "s3_access_key"), str(SECRETS / "s3_secret_key")]
    secrets = {"s3_access_key": ("var", "S3_ACCESS_KEY"), "s3_secret_key": ("var", "S3_SECRET_KEY")}
    if pgbackrest_repo.embedded_tls(cfg):  # HTTPS beside the plain port, for pgBackRest's repository
        weed += [f"-s3.port.https={PORTS['s3_tls']}", f"-s3.cert.file={SECRETS / 's3_tls_cert'}",
                 f"-s3.key.file={SECRETS / 's3_tls_key'}"]
        secrets |= {"s3_tls_cert": ("tls", "cert"), "s3_tls_key": ("tls", "key")}
    script = f"""
umask 077
python3 -c {shlex.quote(_S3_IDENTITIES.strip())} {shlex.join(keys)} > /tmp/s3.json
exec {shlex.join(weed)}
"""
    return ContainerSpec(
        "s3",
        None,
        cfg.docker.s3_image,
        _sh(script),
        secrets=secrets,
        ports=[(cfg.host, cfg.ports.s3, PORTS["s3"])],
        volumes={"s3": "/data"},
        healthcheck=["CMD", "python3", "-c", _http_check(f"http://127.0.0.1:{PORTS['s3']}/", any_status=True)],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
    )


def nginx_conf(cfg: OpsConfig, network_api: bool = False) -> str:
    """The proxy's config. An api that listens on TCP only (or any api, with ``network_api``) is reached by its
    name on the project network (``api-<color>``, resolved by the engine's DNS at request time: the color's
    container is created after the proxy and again on every deploy)."""
    tcp = {c: (unit_name("api", c), PORTS["api"]) for c in COLORS}
    if cfg.app.processes["api"].socket_env and not network_api:
        tcp = {}
    text = nginx.render(listen_host="0.0.0.0", listen_port=PORTS["proxy"], prefix=RUN, logs=Path("/var/log/nginx"),
                        run_dir=RUN, tcp=tcp, resolver=DOCKER_DNS if tcp else None)
    # the master runs as root in the container whoever renders: workers always run as www-data
    head, _, rest = text.partition("\n")
    second, _, rest = rest.partition("\n")
    return f"{head}\nuser www-data;\n{rest}" if second.startswith("user ") or not second.strip() else text


def proxy(cfg: OpsConfig, network_api: bool = False) -> ContainerSpec:
    temp = " ".join(str(RUN / "tmp" / d) for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    script = f"""
mkdir -p {temp} {RUN}/sock {RUN}/web {RUN}/colors
chmod 1777 {RUN}/sock
printf '%s' "$NGINX_CONF" > {PROXY_CONF}
unset NGINX_CONF
nginx -t -q -c {PROXY_CONF} -p {RUN}/
exec nginx -c {PROXY_CONF} -p {RUN}/ -g 'daemon off;'
"""
    return ContainerSpec(
        "proxy",
        None,
        cfg.docker.proxy_image,
        _sh(script),
        environment={"NGINX_CONF": nginx_conf(cfg, network_api)},
        ports=[(cfg.host, cfg.ports.proxy, PORTS["proxy"])],
        volumes={"run": str(RUN)},
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
        stop_signal="SIGQUIT",
    )


def _http_check(url: str, any_status: bool = False) -> str:
    if any_status:
        return (
            "import urllib.request as u, urllib.error as e\n"
            f"try: u.urlopen('{url}', timeout=3)\nexcept e.HTTPError: pass"
        )
    return f"import urllib.request as u; u.urlopen('{url}', timeout=3)"


def _envexec(env_file: str | None, overrides: dict[str, str], argv: list[str],
             external: tuple[str, ...] = (), from_env: tuple[str, ...] = ()) -> list[str]:
    """The app's command: envexec reads the env file (a secret file) and execs ``argv``. The env files hold the
    host's view (published ports); inside the network the embedded services have names, so their URLs get host
    and port rewritten (credentials kept; an ``external`` service's URL is used as written), then the per-color,
    never secret, ``overrides`` win, and the variables named in ``from_env`` as the container's environment has
    them (the secret-looking ones)."""
    cmd = ["python3", "-m", "aixsss_ops.runtime.envexec"]
    if env_file:
        cmd += ["--env-file", str(SECRETS / env_file)]
    for var, service in (("DATABASE_URL", "postgres"), ("REDIS_URL", "redis")):
        if service not in external:
            cmd += ["--url-host", f"{var}={service}:{PORTS[service]}"]
    for k, v in overrides.items():
        cmd += ["--set", f"{k}={v}"]
    for k in from_env:
        cmd += ["--from-env", k]
    return [*cmd, "--", *argv]


APP_ROOT = "/srv/app"  # where an app image holds its release


def app_processes(cfg: OpsConfig, color: str, release: str, version: str, image: str) -> list[ContainerSpec]:
    """The containers of ``color`` running one release: one per process of the app description."""
    return [app_process(cfg, role, color, release, version, image) for role in appspec.roles(cfg)]


def app_process(cfg: OpsConfig, role: str, color: str, release: str, version: str, image: str,
                network_only: bool = False) -> ContainerSpec:
    """One process of the app description as a container of the release's image. Inside it the release is at
    APP_ROOT, the process's port (its ``port_env``) is PORTS["api"], published on the color's host port, and it
    binds every address of its container (``{host}`` is 0.0.0.0). ``network_only``: reached on the project
    network only (no published port, no unix socket)."""
    spec = appspec.spec_of(cfg, role)

    def fill(text: str) -> str:
        return appspec.fill(text, release=Path(APP_ROOT), color=color, version=version, host="0.0.0.0",
                            python="python3")

    overrides = {"APP_COLOR": color, "APP_VERSION": version, **{k: fill(v) for k, v in spec.env.items()}}
    if "s3" not in cfg.external:
        overrides = {"S3_ENDPOINT": f"http://s3:{PORTS['s3']}", **overrides}
    ports, volumes, healthcheck = [], {}, None
    if spec.port_env:
        overrides[spec.port_env] = str(PORTS["api"])
        ports = [] if network_only else [(cfg.host, api_port(cfg, color), PORTS["api"])]
        if spec.ready.http:
            healthcheck = ["CMD", "python3", "-c", _http_check(f"http://127.0.0.1:{PORTS['api']}{spec.ready.http}")]
    if spec.socket_env and not network_only:
        overrides[spec.socket_env] = str(api_socket(color))
        volumes = {"run": str(RUN)}
    env_file = appspec.env_file_of(role, spec)
    secrets = {f"{env_file}.env": ("env_file", env_file)} if env_file else {}
    argv = [fill(a) for a in spec.command]
    # a value that looks secret (as ``config show`` masks it) is in the container's environment, off its command line
    hidden = {k: v for k, v in overrides.items() if is_secret_name(k) or url_password(v)}
    plain = {k: v for k, v in overrides.items() if k not in hidden}
    return ContainerSpec(
        role,
        color,
        image,
        _envexec(f"{env_file}.env" if env_file else None, plain, argv, cfg.external, tuple(hidden)),
        user=APP_USER,
        working_dir=posixpath.normpath(posixpath.join(APP_ROOT, fill(spec.cwd))),
        environment=hidden,
        secrets=secrets,
        ports=ports,
        volumes=volumes,
        healthcheck=healthcheck,
        memory=cfg.docker.app_memory,
        cpus=cfg.docker.app_cpus,
        stop_signal=spec.stop_signal if spec.stop_signal.startswith("SIG") else f"SIG{spec.stop_signal}",
        stop_timeout=int(spec.stop_timeout),
        release=release,
        version=version,
    )


def embedded_infra(cfg: OpsConfig) -> list[ContainerSpec]:
    """postgres, redis and s3, except those ops.toml marks external."""
    makers = {"postgres": postgres, "redis": redis, "s3": s3}
    return [make(cfg) for name, make in makers.items() if name not in cfg.external]


def infra(cfg: OpsConfig) -> list[ContainerSpec]:
    return [*embedded_infra(cfg), proxy(cfg)]


def secret_values(cfg: OpsConfig, stack_secrets: dict[str, str]) -> dict[str, str]:
    """The values behind SECRET_VARS (the env files are the app's other secrets)."""
    return {
        "POSTGRES_SUPERUSER_PASSWORD": stack_secrets["postgres_superuser_password"],
        "REDIS_PASSWORD": stack_secrets["redis_password"],
        "S3_ACCESS_KEY": cfg.s3.access_key,
        "S3_SECRET_KEY": cfg.s3.secret_key.get_secret_value(),
    }
