"""Cheap readiness probes with short timeouts; each returns (ok, detail) and never raises."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit


def _get(url: str, timeout: float, limit: int = 65536) -> tuple[int, bytes]:
    """GET ``url`` (http only, no proxy, no redirect): (status, at most ``limit`` bytes of the body). Raises
    OSError (a malformed answer too)."""
    from http.client import HTTPConnection, HTTPException  # imported when a probe runs: it pulls in ssl and email

    u = urlsplit(url)
    conn = HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=timeout)
    try:
        conn.request("GET", (u.path or "/") + (f"?{u.query}" if u.query else ""), headers={"Connection": "close"})
        r = conn.getresponse()
        return r.status, r.read(limit)
    except HTTPException as e:
        raise ConnectionError(f"{type(e).__name__}: {e}") from None
    finally:
        conn.close()


def _reason(e: Exception) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


def tcp(host: str, port: int, timeout: float = 1.0) -> tuple[bool, str]:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, f"{host}:{port} accepting connections"
    except OSError as e:
        return False, f"{host}:{port} {e.strerror or e}"


def http(url: str, timeout: float = 2.0, expect_any_status: bool = False) -> tuple[bool, str]:
    try:
        code, _ = _get(url, timeout, 0)
    except OSError as e:
        return False, _reason(e)
    return (code < 400 or expect_any_status), f"HTTP {code}"


def http_ready(url: str, status: int = 200, fields: dict | None = None, timeout: float = 2.0) -> tuple[bool, str, dict]:
    """``url`` answers ``status`` (and, when ``fields`` are given, a JSON object holding them); (ok, detail, body)."""
    body: dict = {}
    try:
        code, raw = _get(url, timeout)
    except OSError as e:
        return False, _reason(e), body
    try:
        parsed = json.loads(raw) if raw else {}
        body = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        body = {}
    if code != status:
        return False, f"HTTP {code} (expected {status})", body
    wrong = {k: body.get(k) for k, v in (fields or {}).items() if body.get(k) != v}
    if wrong:
        return False, f"HTTP {code} but {', '.join(f'{k}={v!r}' for k, v in wrong.items())} (expected {fields})", body
    return True, f"HTTP {code}", body


def redis_client_names(url: str, timeout: float = 2.0) -> list[str]:
    """The names of Redis's connected clients (``CLIENT LIST``)."""
    import redis

    r = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True)
    try:
        return [c.get("name", "") for c in r.client_list()]
    finally:
        r.close()


def api_health(url: str, timeout: float = 2.0) -> tuple[bool, dict | str]:
    try:
        code, raw = _get(url, timeout)
    except OSError as e:
        return False, _reason(e)
    if code >= 400:
        return False, f"HTTP {code}"
    try:
        body = json.loads(raw)
    except ValueError as e:
        return False, str(e)
    return (bool(body.get("ok")), body) if isinstance(body, dict) else (False, "not a JSON object")


# The same readiness rule run inside a container, where the data folder and the master port are local.
SEAWEED_READY_SCRIPT = """
import glob, json, sys, urllib.request
expected = len(glob.glob(sys.argv[1] + "/*.dat"))
topo = json.load(urllib.request.urlopen(sys.argv[2] + "/dir/status", timeout=2)).get("Topology") or {}
known = sum(n.get("Volumes", 0) for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
            for n in rack.get("DataNodes") or [])
print(f"{known} of {expected} volumes registered with the master")
sys.exit(0 if known >= expected else 1)
"""


def seaweed_volumes(master_url: str, expected: int, timeout: float = 2.0) -> tuple[bool, str]:
    """SeaweedFS serves reads only once the volume servers have reported every volume on disk to the master;
    until then the S3 port already answers but a GET of an existing object fails with 500."""
    try:
        code, raw = _get(f"{master_url}/dir/status", timeout, 16 << 20)
        if code != 200:
            return False, f"master {master_url}: HTTP {code}"
        topo = json.loads(raw).get("Topology") or {}
    except OSError as e:
        return False, f"master {master_url}: {_reason(e)}"
    except ValueError as e:
        return False, f"master {master_url}: {e}"
    known = sum(n.get("Volumes", 0) for dc in topo.get("DataCenters") or [] for rack in dc.get("Racks") or []
                for n in rack.get("DataNodes") or [])
    if known < expected:
        return False, f"{known} of {expected} volumes registered with the master"
    return True, f"serving, {known} volume(s)"


def _resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_ping(host: str, port: int, timeout: float = 1.0, password: str | None = None) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            f = s.makefile("rb")
            if password:
                s.sendall(_resp(b"AUTH", password.encode()))
                reply = f.readline()
                if not reply.startswith(b"+OK"):
                    return False, "AUTH refused: " + reply.decode(errors="replace").strip()
            s.sendall(_resp(b"PING"))
            reply = f.readline()
        return reply.startswith(b"+PONG"), reply.decode(errors="replace").strip()
    except OSError as e:
        return False, f"{host}:{port} {e.strerror or e}"


def postgres(conninfo: str, timeout: float = 2.0) -> tuple[bool, str]:
    import psycopg

    try:
        with psycopg.connect(conninfo, connect_timeout=max(1, int(timeout))) as c:
            v = c.execute("SHOW server_version").fetchone()[0]
        return True, f"PostgreSQL {v}"
    except psycopg.Error as e:
        from aixsss_ops.errors import driver_message

        return False, driver_message(e)


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def listening_on_every_interface(port: int) -> bool:
    """Whether a TCP socket listens on ``port`` of every interface (0.0.0.0 or ::), read from /proc/net."""
    for name, anyaddr in (("tcp", "00000000"), ("tcp6", "0" * 32)):
        try:
            lines = open(f"/proc/net/{name}", encoding="ascii").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, _, hexport = parts[1].partition(":")
            if parts[3] == "0A" and int(hexport, 16) == port and addr == anyaddr:
                return True
    return False
