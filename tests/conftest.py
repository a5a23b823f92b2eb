"""Real services for the test session: started once, isolated per test by database/queue/bucket."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_slice() -> tuple[int, int]:
    """[first, end) of the ports this test process hands out: the 12,000 ports below the kernel's ephemeral range,
    split evenly between the workers of a parallel run (pytest-xdist's gwN of PYTEST_XDIST_WORKER_COUNT), so two
    workers never hand out the same port while its server has yet to bind it."""
    low = _ephemeral_low()
    span = min(12000, low - 1024)
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int((os.environ.get("PYTEST_XDIST_WORKER") or "gw0").removeprefix("gw") or 0)
    width = span // count
    first = low - span + index * width
    return first, first + width


def free_port() -> int:
    """A port nothing is bound to on any address, below the kernel's ephemeral range (outgoing connections take
    their source ports there: a port picked from it can be taken by one before its server binds it), in this
    process's slice of that range, and never handed out twice in a session."""
    first, end = _port_slice()
    for _ in range(2000):
        port = first + secrets.randbelow(end - first)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port in {first}-{end - 1}")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open within {timeout}s")


def poll(predicate, timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Wait until ``predicate()`` is truthy (return it) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


_SESSION_DIRS: list[Path] = []


def state_tmpdir(prefix: str) -> Path:
    """A temp dir reachable by the unprivileged postgres account (pytest's tmp_path is 0700); removed when the
    session ends unless AIXSSS_TEST_KEEP_TMP is set."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(d, 0o755)
    _SESSION_DIRS.append(d)
    return d


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items):
    """A parallel run (``-n 2 --dist loadgroup``) hands each module to one worker, so a module's fixtures are set
    up once, and every docker test to one worker, the one that runs dockerd."""
    for item in items:
        group = "docker" if "/integration/docker/" in str(item.fspath) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_sessionfinish(session, exitstatus):
    """Every fixture is torn down by now: remove the session's temp dirs (clusters, stacks, checkouts), so
    repeated runs do not fill the disk."""
    if os.environ.get("AIXSSS_TEST_KEEP_TMP"):
        return
    import shutil

    for d in _SESSION_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def findings_not_ok(report: dict) -> list[dict]:
    """The doctor findings that are not ok, except a host.disk-* finding whose level is what this machine's free
    space calls for (the suite runs on disks of any fullness; the level itself is checked)."""
    import shutil

    from aixsss_ops.doctor.checks import disk_level

    bad = []
    for f in report["findings"]:
        if f["status"] == "ok":
            continue
        if f["check"].startswith("host.disk-"):
            path = Path(f["message"].rsplit("(", 1)[1].rstrip(")"))
            while not path.exists():
                path = path.parent
            u = shutil.disk_usage(path)
            if f["status"] == disk_level(u.free, u.total):
                continue
        bad.append(f)
    return bad


@dataclass
class PgServer:
    host: str
    port: int
    superuser: str
    password: str

    def url(self, database: str = "postgres", *, schema: str | None = "public") -> str:
        q = f"?schema={schema}" if schema else ""
        return f"postgresql://{self.superuser}:{self.password}@{self.host}:{self.port}/{database}{q}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(schema=None), autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return name


def wait_accepting(server, timeout: float = 30) -> None:
    """Until ``server`` accepts a login (its port opens before it does)."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(server.url(schema=None), connect_timeout=2).close()
            return
        except psycopg.Error:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def pg_server():
    """A private PostgreSQL cluster on a free port (run as the postgres account when root)."""
    from aixsss_ops.runtime.pg_cluster import Cluster, os_account

    root = state_tmpdir("aixsss-pg-")
    password = secrets.token_urlsafe(16)
    cluster = Cluster(datadir=root / "data", port=free_port(), host="127.0.0.1", os_user="postgres")
    cluster.init("postgres", password)
    acct = os_account("postgres")
    kw = {"user": acct.pw_uid, "group": acct.pw_gid, "extra_groups": []} if acct else {}
    log = open(root / "postgres.log", "wb")
    proc = subprocess.Popen(cluster.server_argv(), stdout=log, stderr=subprocess.STDOUT, **kw)
    try:
        wait_port(cluster.port)
        server = PgServer("127.0.0.1", cluster.port, "postgres", password)
        wait_accepting(server)
        yield server
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture
def database_url(pg_server) -> str:
    """A fresh empty database for one test, as a Prisma-style URL (``?schema=public``)."""
    return pg_server.url(pg_server.create_database())


@dataclass
class RedisServer:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server on a free port, AOF on and noeviction, as the embedded stack runs it."""
    from aixsss_ops import sysbin

    root = state_tmpdir("aixsss-redis-")
    port = free_port()
    proc = subprocess.Popen(
        [
            sysbin.find("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(root),
            "--appendonly",
            "yes",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield RedisServer("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def queue_name() -> str:
    """A queue name no other test uses (tests share one Redis)."""
    return f"q-{uuid.uuid4().hex[:10]}"


PORT_KEYS = (
    "postgres", "redis", "s3", "s3_grpc", "s3_tls", "weed_master", "weed_master_grpc", "weed_volume", "weed_volume_grpc",
    "weed_filer", "weed_filer_grpc", "proxy", "api_blue", "api_green",
)


NODE_FIXTURE = REPO / "tests" / "fixtures" / "nodeapp"


def node_app_toml(source: Path) -> str:
    """The [app] tables describing the Node fixture app at ``source`` (a copy of tests/fixtures/nodeapp)."""
    return f'''source = "{source}"
version = "1.0.0"
build = [["npm", "ci", "--no-audit", "--no-fund"], {{ run = ["npm", "run", "build"], timeout = 300 }}]
migrations = "apps/api/prisma/migrations"
web_root = "apps/web/dist"

[app.processes.api]
command = ["node", "dist/main.js"]
cwd = "apps/api"
port_env = "PORT"
ready = {{ http = "/api/health", json = {{ ok = true }} }}
stop_timeout = 10

[app.processes.worker]
command = ["node", "dist/worker.js"]
cwd = "apps/worker"
ready = {{ log = '\\[worker\\] ready' }}
stop_timeout = 30
'''


def node_app_copy(root: Path, name: str = "src", patch: dict[str, str] | None = None) -> Path:
    """A copy of the Node fixture's source under ``root``; ``patch``: file -> text put first in it."""
    import shutil

    dst = root / name
    if not dst.exists():
        shutil.copytree(NODE_FIXTURE, dst, ignore=shutil.ignore_patterns("node_modules", "dist"))
        for rel, text in (patch or {}).items():
            f = dst / rel
            f.write_text(text + f.read_text())
    return dst


BUNDLED_API = '["{python}", "-m", "api"]'
BUNDLED_WORKER = '["{python}", "-m", "worker"]'


def bundled_app_toml(api: str = BUNDLED_API, worker: str = BUNDLED_WORKER, *, source: Path | None = None,
                     build: str = "", socket: bool = True, api_lines: tuple[str, ...] = (),
                     worker_lines: tuple[str, ...] = ()) -> str:
    """The [app] table of the bundled app written out as an ops.toml describes it (``stack_config``'s
    ``app_toml``): its api and worker commands, a build step list, the api on a unix socket too (``socket``), and
    extra lines for each process."""
    return "\n".join([
        f'source = "{source or REPO / "app"}"',
        *([f"build = {build}"] if build else []),
        "[app.processes.api]",
        f"command = {api}",
        'port_env = "PORT"',
        *(['socket_env = "API_SOCKET"'] if socket else []),
        'env = { PYTHONPATH = "{release}", PYTHONUNBUFFERED = "1", HOST = "{host}" }',
        'ready = { http = "/api/health" }',
        *api_lines,
        "[app.processes.worker]",
        f"command = {worker}",
        'env = { PYTHONPATH = "{release}", PYTHONUNBUFFERED = "1" }',
        'ready = { log = "worker consuming queue" }',
        *worker_lines,
    ])


def stack_config(root: Path, app_toml: str = "", **sections: dict) -> Path:
    """An ops.toml for a stack of its own under ``root``: every port free, the bundled app (``app_toml``: TOML
    lines of the [app] table and its sub-tables, for another app)."""
    lines = [f'state_dir = "{root / "state"}"', "", "[ports]"]
    ports: set[int] = set()
    for key in PORT_KEYS:
        p = free_port()
        while p in ports:
            p = free_port()
        ports.add(p)
        lines.append(f"{key} = {p}")
    for name, values in sections.items():
        lines += ["", f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    lines += ["", "[app]"] + ([app_toml] if app_toml else [f'source = "{REPO / "app"}"'])
    path = root / "ops.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    reader: tuple[str, str] = ("", "")  # a key of its own that may read and list, not write

    def target(self, key: tuple[str, str] | None = None):
        from aixsss_ops.s3 import S3Target

        return S3Target(self.endpoint, *(key or (self.access_key, self.secret_key)))

    def new_bucket(self, versioned: bool = False) -> str:
        from minio.commonconfig import ENABLED
        from minio.versioningconfig import VersioningConfig

        name = f"b-{uuid.uuid4().hex[:12]}"
        c = self.target().client()
        c.make_bucket(name)
        if versioned:
            c.set_bucket_versioning(name, VersioningConfig(ENABLED))
        return name


@pytest.fixture(scope="session")
def s3_server():
    """A real SeaweedFS (`weed server -s3`) on free ports, the stack's own service definition."""
    from aixsss_ops import probes
    from aixsss_ops.config import load_config
    from aixsss_ops.context.layout import Layout
    from aixsss_ops.runtime import local_specs as services

    root = state_tmpdir("aixsss-s3-")
    cfg = load_config(stack_config(root))
    layout = Layout(cfg.state)
    (layout.s3_dir / "data").mkdir(parents=True)
    services.write_s3_identities(cfg, layout)
    reader = (f"reader{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
    ident = json.loads(layout.s3_identities.read_text())
    ident["identities"].append({"name": "reader", "credentials": [{"accessKey": reader[0], "secretKey": reader[1]}],
                                "actions": ["Read", "List"]})
    layout.s3_identities.write_text(json.dumps(ident))
    proc = subprocess.Popen(services.s3(cfg, layout).program.argv, stdout=open(root / "weed.log", "wb"),
                            stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{cfg.ports.s3}"
    try:
        deadline = time.monotonic() + 60
        while not probes.http(endpoint + "/", expect_any_status=True)[0]:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not start: {(root / 'weed.log').read_text()[-2000:]}")
            time.sleep(0.2)
        server = S3Server(endpoint, cfg.s3.access_key, cfg.s3.secret_key.get_secret_value(), reader)
        deadline = time.monotonic() + 30
        while True:  # the filer can lag the S3 port by a moment
            try:
                server.target().client().list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        proc.kill()
        proc.wait(30)
