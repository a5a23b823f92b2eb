"""nginx as the reverse proxy: ``/api`` to the live color's api, ``/`` to its web build.

The config never names a color. It proxies to ``<proxy>/live/api.sock`` and serves ``<proxy>/live/web``,
where ``live`` is a symlink to ``colors/<color>``; a color's ``api.sock`` is its api's own unix socket, or, for
an api that listens on TCP only, a unix socket nginx itself listens on and forwards to that color's port. nginx
resolves a unix socket path at every connect() and a root at every request, so a switch is one atomic
``rename(2)`` of that symlink: no reload, no worker restart, no keepalive connection closed under a client;
requests in flight finish on the old color. The config is only re-rendered, checked (``nginx -t``) and gracefully
reloaded (SIGHUP) when it changes (ports, paths, an app with or without its own socket), which ``stack up`` does.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from aixsss_ops import sysbin
from aixsss_ops.errors import OpsError
from aixsss_ops.fsutil import atomic_write

_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def live_link(prefix: Path) -> Path:
    return prefix / "live"


def color_dir(prefix: Path, color: str) -> Path:
    return prefix / "colors" / color


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def prepare_color(prefix: Path, color: str, api_socket: Path, web_root: Path) -> None:
    """Point ``colors/<color>`` at that color's api socket and web build (done while the color is idle)."""
    d = color_dir(prefix, color)
    d.mkdir(parents=True, exist_ok=True)
    _replace_symlink(d / "api.sock", str(api_socket))
    _replace_symlink(d / "web", str(web_root))


def switch_live(prefix: Path, color: str) -> None:
    """Send new requests to ``color``: one atomic rename of the ``live`` symlink."""
    if not color_dir(prefix, color).is_dir():
        raise OpsError(f"the {color} color was never prepared for the proxy")
    _replace_symlink(live_link(prefix), f"colors/{color}")


def quote(value: object) -> str:
    """One argument of an nginx directive, double-quoted (a path with a space, ``;`` or ``{`` is still one)."""
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def worker_group() -> int | None:
    """The group nginx's worker processes run as (they connect to the api sockets), when we run as root."""
    user = _worker_user()
    return pwd.getpwnam(user).pw_gid if user else None


def pid_file(prefix: Path) -> Path:
    """Where the master writes its pid (the config's ``pid``)."""
    return prefix / "nginx.pid"


def color_socket(run_dir: Path, color: str) -> Path:
    """Where nginx itself listens for a color whose api has TCP only (the color's ``api.sock`` points here)."""
    return run_dir / f"proxy-{color}.sock"


def _color_servers(run_dir: Path, tcp: dict[str, tuple[str, int]], resolver: str | None = None) -> str:
    """For an api that listens on TCP only: per color, a server on a unix socket of nginx's own that forwards to
    the color's host:port, so the live symlink can point at it like at an app's socket. With a fixed address the
    upstream keeps connections alive; with ``resolver`` the host is a name looked up at request time (a container
    that is created again on every deploy)."""
    out = []
    if resolver:  # a name may also stand for several replicas, one of them on a node that just died: the next
        # replica is tried after a 1 s connect timeout
        out.append(f"""
    resolver {resolver} valid=2s ipv6=off;""")
    for color, (host, port) in sorted(tcp.items()):
        if resolver:
            target = f"""set $aixsss_{color} http://{host}:{port};
            proxy_pass $aixsss_{color};"""
        else:
            out.append(f"""
    upstream aixsss_{color} {{
        server {host}:{port} max_fails=0;
        keepalive 32;
    }}""")
            target = f"""proxy_pass http://aixsss_{color};
            proxy_set_header Connection "";"""
        out.append(f"""

    server {{
        listen {quote(f"unix:{color_socket(run_dir, color)}")};
        location / {{
            {target}
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $http_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $http_x_forwarded_proto;
            proxy_set_header X-Request-Id $http_x_request_id;
            proxy_buffering off;
            proxy_connect_timeout {"1s" if resolver else "5s"};
            proxy_read_timeout 3600s;
        }}
    }}""")
    return "".join(out)


def render(*, listen_host: str, listen_port: int, prefix: Path, logs: Path, run_dir: Path | None = None,
           tcp: dict[str, tuple[str, int]] | None = None, resolver: str | None = None) -> str:
    """The config. ``tcp``: color -> (host, port) of an api that has no unix socket (see ``_color_servers``)."""
    user = _worker_user()
    colors = _color_servers(run_dir, tcp, resolver) if tcp and run_dir else ""
    temp = "\n".join(f"    {d}_temp_path {quote(prefix / 'tmp' / d)};" for d in _TEMP_DIRS)
    live = live_link(prefix)
    return f"""# rendered by aixsss-ops; the live color is the target of the symlink {live}
{f"user {user};" if user else ""}
worker_processes 2;
pid {quote(pid_file(prefix))};
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
    access_log {quote(logs / "proxy-access.log")};
{temp}
    sendfile on;
    keepalive_timeout 65;
    gzip on;
    gzip_types text/css application/javascript application/json image/svg+xml;
    client_max_body_size 50m;

    upstream aixsss_api {{
        # no upstream keepalive: every request connects anew, so it follows the live symlink
        server {quote(f"unix:{live}/api.sock")} max_fails=0;
    }}{colors}

    server {{
        listen {listen_host}:{listen_port};
        # inherited by every location below (none sets its own)
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-Id $request_id;

        location = /api {{
            return 308 /api/;
        }}
        location /api/ {{
            proxy_pass http://aixsss_api;
            proxy_next_upstream error timeout;
            proxy_connect_timeout 5s;
            proxy_read_timeout 300s;
        }}
        location ~ ^/api/.+/events$ {{
            # server-sent events (a job's progress): streamed, not buffered
            proxy_pass http://aixsss_api;
            proxy_buffering off;
            proxy_read_timeout 3600s;
        }}
        location / {{
            root {quote(f"{live}/web")};
            try_files $uri /index.html;
        }}
    }}
}}
"""


def write_config(conf: Path, text: str) -> bool:
    """Write the config after ``nginx -t`` accepted it (a rejected one leaves the old in place); True if changed."""
    if conf.exists() and conf.read_text() == text:
        return False
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
    return True


def test_config(conf: Path, prefix: Path) -> None:
    r = subprocess.run(
        [sysbin.find("nginx"), "-t", "-q", "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if r.returncode != 0:
        raise OpsError("nginx rejected the proxy config", details=r.stderr.strip())


def live_color(prefix: Path) -> str | None:
    try:
        return Path(os.readlink(live_link(prefix))).name
    except (FileNotFoundError, OSError):
        return None
