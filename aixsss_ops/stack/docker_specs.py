"""What each container of the docker runtime is, as plain data: the runtime creates containers from these specs
and ``compose render`` writes compose files from the same specs, so the two cannot drift apart.

Values that hold secrets are templates (``${POSTGRES_APP_PASSWORD}``): the runtime substitutes them from the
state directory and ops.toml when it creates a container; compose substitutes them from its environment/.env.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aixsss_ops.config import OpsConfig
from aixsss_ops.proxy import nginx
from aixsss_ops.runtime.base import unit_name

RUN = Path("/run/aixsss")  # the shared volume: api sockets, web builds, the live symlink; nginx's prefix
PG_DATA = "/var/lib/postgresql/data"
PORTS = {"postgres": 5432, "redis": 6379, "s3": 8333, "proxy": 80, "api": 3001}
VOLUMES = ("pgdata", "redis", "s3", "run")
SECRET_VARS = ("POSTGRES_SUPERUSER_PASSWORD", "POSTGRES_APP_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY")
_VAR = re.compile(r"\$\{([A-Z0-9_]+)\}")


@dataclass
class ContainerSpec:
    service: str
    color: str | None
    image: str
    command: list[str]
    user: str | None = None
    environment: dict[str, str] = field(default_factory=dict)  # may hold ${SECRET} templates
    env_files: list[str] = field(default_factory=list)  # the service env files (api, worker) passed as environment
    ports: list[tuple[str, int, int]] = field(default_factory=list)  # (host ip, host port, container port)
    volumes: dict[str, str] = field(default_factory=dict)  # volume key (VOLUMES) -> mount point
    healthcheck: list[str] | None = None
    restart: str = "unless-stopped"
    memory: str = ""
    cpus: float = 0.0
    stop_signal: str = "SIGTERM"
    stop_timeout: int = 30
    labels: dict[str, str] = field(default_factory=dict)
    release: str | None = None
    version: str | None = None

    @property
    def unit(self) -> str:
        return unit_name(self.service, self.color)

    def port_labels(self) -> dict[str, int]:
        return {(self.unit if self.service != "api" else f"api {self.color}"): hp for _ip, hp, _cp in self.ports}

    def digest(self, secrets: dict[str, str], env_files: dict[str, dict[str, str]]) -> str:
        """Changes whenever the container would be created differently (secrets included, as a hash)."""
        data = asdict(self)
        data["resolved"] = resolve_env(self, secrets, env_files)
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def substitute(value: str, secrets: dict[str, str]) -> str:
    return _VAR.sub(lambda m: secrets.get(m.group(1), m.group(0)), value)


def resolve_env(spec: ContainerSpec, secrets: dict[str, str], env_files: dict[str, dict[str, str]]) -> dict[str, str]:
    """The environment the container gets: its env files, then the spec's own variables (secrets substituted)."""
    env: dict[str, str] = {}
    for name in spec.env_files:
        env.update(env_files.get(name, {}))
    env.update({k: substitute(v, secrets) for k, v in spec.environment.items()})
    return env


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


def postgres(cfg: OpsConfig) -> ContainerSpec:
    script = f"""
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  umask 077
  printf '%s\\n' "$POSTGRES_PASSWORD" > /tmp/.pwfile
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/.pwfile --auth-host=scram-sha-256 --auth-local=trust \\
    -E UTF8 --locale=C.UTF-8 >/dev/null
  rm -f /tmp/.pwfile
  echo 'host all all all scram-sha-256' >> "$PGDATA/pg_hba.conf"
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA" -c listen_addresses='*' -c port={PORTS["postgres"]} -c max_connections=200
"""
    return ContainerSpec(
        "postgres",
        None,
        cfg.docker.postgres_image,
        _sh(script),
        user="postgres",
        environment={
            "PGDATA": PG_DATA,
            "POSTGRES_USER": cfg.postgres.superuser,
            "POSTGRES_PASSWORD": "${POSTGRES_SUPERUSER_PASSWORD}",
        },
        ports=[(cfg.host, cfg.ports.postgres, PORTS["postgres"])],
        volumes={"pgdata": str(Path(PG_DATA).parent)},
        healthcheck=["CMD", "pg_isready", "-q", "-h", "127.0.0.1", "-p", str(PORTS["postgres"])],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
        stop_signal="SIGINT",
        stop_timeout=60,
    )


def redis(cfg: OpsConfig) -> ContainerSpec:
    argv = [
        "redis-server", "--bind", "0.0.0.0", "--port", str(PORTS["redis"]), "--dir", "/var/lib/redis",
        "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory", cfg.redis.maxmemory,
        "--maxmemory-policy", "noeviction", "--save", "3600 1 300 100 60 10000", "--daemonize", "no",
        "--protected-mode", "no",
    ]  # fmt: skip
    return ContainerSpec(
        "redis",
        None,
        cfg.docker.redis_image,
        argv,
        user="redis",
        ports=[(cfg.host, cfg.ports.redis, PORTS["redis"])],
        volumes={"redis": "/var/lib/redis"},
        healthcheck=["CMD", "redis-cli", "-p", str(PORTS["redis"]), "ping"],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
    )


def s3_identities_template() -> str:
    ident = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": "${S3_ACCESS_KEY}", "secretKey": "${S3_SECRET_KEY}"}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    return json.dumps(ident, separators=(",", ":"))


def s3(cfg: OpsConfig) -> ContainerSpec:
    weed = [
        "weed", "server", "-dir=/data", "-ip=s3", "-ip.bind=0.0.0.0", "-s3", f"-s3.port={PORTS['s3']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.config=/tmp/s3.json", "-volume.preStopSeconds=0",
        f"-master.volumeSizeLimitMB={cfg.s3.volume_size_limit_mb}", "-volume.max=0", "-metricsPort=0",
    ]  # fmt: skip
    script = f"""
umask 077
printf '%s' "$S3_IDENTITIES" > /tmp/s3.json
unset S3_IDENTITIES
exec {shlex.join(weed)}
"""
    return ContainerSpec(
        "s3",
        None,
        cfg.docker.s3_image,
        _sh(script),
        environment={"S3_IDENTITIES": s3_identities_template()},
        ports=[(cfg.host, cfg.ports.s3, PORTS["s3"])],
        volumes={"s3": "/data"},
        healthcheck=["CMD", "python3", "-c", _http_check(f"http://127.0.0.1:{PORTS['s3']}/", any_status=True)],
        memory=cfg.docker.infra_memory,
        cpus=cfg.docker.infra_cpus,
    )


def nginx_conf(cfg: OpsConfig) -> str:
    text = nginx.render(listen_host="0.0.0.0", listen_port=PORTS["proxy"], prefix=RUN, logs=Path("/var/log/nginx"))
    # the master runs as root in the container whoever renders: workers always run as www-data
    head, _, rest = text.partition("\n")
    second, _, rest = rest.partition("\n")
    return f"{head}\nuser www-data;\n{rest}" if second.startswith("user ") or not second.strip() else text


def proxy(cfg: OpsConfig) -> ContainerSpec:
    temp = " ".join(str(RUN / "tmp" / d) for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    script = f"""
mkdir -p {temp} {RUN}/sock {RUN}/web {RUN}/colors
chmod 1777 {RUN}/sock
printf '%s' "$NGINX_CONF" > /etc/nginx/aixsss.conf
unset NGINX_CONF
nginx -t -q -c /etc/nginx/aixsss.conf -p {RUN}/
exec nginx -c /etc/nginx/aixsss.conf -p {RUN}/ -g 'daemon off;'
"""
    return ContainerSpec(
        "proxy",
        None,
        cfg.docker.proxy_image,
        _sh(script),
        environment={"NGINX_CONF": nginx_conf(cfg)},
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


def _app_env(cfg: OpsConfig, color: str, version: str) -> dict[str, str]:
    p = cfg.postgres
    return {
        # the env files hold the host's view (published ports); inside the network the services have names
        "DATABASE_URL": f"postgresql://{p.user}:${{POSTGRES_APP_PASSWORD}}@postgres:{PORTS['postgres']}/{p.database}"
        "?schema=public",
        "REDIS_URL": f"redis://redis:{PORTS['redis']}",
        "S3_ENDPOINT": f"http://s3:{PORTS['s3']}",
        "APP_COLOR": color,
        "APP_VERSION": version,
        "PYTHONUNBUFFERED": "1",
    }


def api_port(cfg: OpsConfig, color: str) -> int:
    return cfg.ports.api_blue if color == "blue" else cfg.ports.api_green


def api(cfg: OpsConfig, color: str, release: str, version: str, image: str) -> ContainerSpec:
    env = {
        **_app_env(cfg, color, version),
        "PORT": str(PORTS["api"]),
        "HOST": "0.0.0.0",
        "API_SOCKET": str(api_socket(color)),
    }
    return ContainerSpec(
        "api",
        color,
        image,
        _sh(f"mkdir -p {api_socket(color).parent}\nexec python3 -m api"),
        environment=env,
        env_files=["api"],
        ports=[(cfg.host, api_port(cfg, color), PORTS["api"])],
        volumes={"run": str(RUN)},
        healthcheck=["CMD", "python3", "-c", _http_check(f"http://127.0.0.1:{PORTS['api']}/api/health")],
        memory=cfg.docker.app_memory,
        cpus=cfg.docker.app_cpus,
        stop_timeout=cfg.docker.stop_timeout,
        release=release,
        version=version,
    )


def worker(cfg: OpsConfig, color: str, release: str, version: str, image: str) -> ContainerSpec:
    return ContainerSpec(
        "worker",
        color,
        image,
        ["python3", "-m", "worker"],
        environment=_app_env(cfg, color, version),
        env_files=["worker"],
        memory=cfg.docker.app_memory,
        cpus=cfg.docker.app_cpus,
        stop_timeout=int(cfg.supervisor.stop_timeout),
        release=release,
        version=version,
    )


def infra(cfg: OpsConfig) -> list[ContainerSpec]:
    return [postgres(cfg), redis(cfg), s3(cfg), proxy(cfg)]


def secret_values(cfg: OpsConfig, stack_secrets: dict[str, str]) -> dict[str, str]:
    return {
        "POSTGRES_SUPERUSER_PASSWORD": stack_secrets["postgres_superuser_password"],
        "POSTGRES_APP_PASSWORD": stack_secrets["postgres_app_password"],
        "S3_ACCESS_KEY": cfg.s3.access_key,
        "S3_SECRET_KEY": cfg.s3.secret_key.get_secret_value(),
    }
