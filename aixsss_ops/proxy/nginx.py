"""nginx as the reverse proxy: ``/api`` to the active color's api, ``/`` to its web build.

Switching colors renders a new config, checks it with ``nginx -t`` and reloads gracefully (SIGHUP):
old workers finish their in-flight requests while new ones take new connections.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from aixsss_ops import sysbin
from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write

_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class ProxyTarget:
    color: str
    api_host: str
    api_port: int
    web_root: Path


def _worker_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def render(*, listen_host: str, listen_port: int, prefix: Path, logs: Path, target: ProxyTarget) -> str:
    user = _worker_user()
    temp = "\n".join(f"    {d}_temp_path {prefix / 'tmp' / d};" for d in _TEMP_DIRS)
    return f"""# rendered by aixsss-ops; active color: {target.color}
{f"user {user};" if user else ""}
worker_processes 2;
pid {prefix / "nginx.pid"};
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    types {{
        text/html html htm;
        text/css css;
        application/javascript js mjs;
        application/json json;
        image/svg+xml svg;
        image/png png;
        image/x-icon ico;
    }}
    default_type application/octet-stream;
    access_log {logs / "proxy-access.log"};
{temp}
    sendfile on;
    keepalive_timeout 65;
    gzip on;
    gzip_types text/css application/javascript application/json image/svg+xml;
    client_max_body_size 50m;

    upstream aixsss_api {{
        # {target.color}
        server {target.api_host}:{target.api_port} max_fails=0;
        keepalive 64;
    }}

    server {{
        listen {listen_host}:{listen_port};
        add_header X-AIXSSS-Color {target.color} always;

        location = /api {{
            return 308 /api/;
        }}
        location /api/ {{
            proxy_pass http://aixsss_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
            proxy_next_upstream error timeout http_502;
            proxy_connect_timeout 5s;
            proxy_read_timeout 300s;
        }}
        location / {{
            root {target.web_root};
            try_files $uri /index.html;
        }}
    }}
}}
"""


def write_config(conf: Path, text: str) -> None:
    """Write the config after ``nginx -t`` accepted it; a rejected config leaves the old one in place."""
    prefix = conf.parent
    for d in _TEMP_DIRS:
        (prefix / "tmp" / d).mkdir(parents=True, exist_ok=True)
    candidate = conf.with_name(conf.name + ".candidate")
    atomic_write(candidate, text)
    try:
        test_config(candidate, prefix)
        os.replace(candidate, conf)
    finally:
        candidate.unlink(missing_ok=True)


def test_config(conf: Path, prefix: Path) -> None:
    r = subprocess.run(
        [sysbin.find("nginx"), "-t", "-q", "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise OpsError("nginx rejected the proxy config", details=r.stderr.strip())


def active_color(conf: Path) -> str | None:
    try:
        first = conf.read_text().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None
    return first.rsplit(":", 1)[1].strip() if "active color:" in first else None
