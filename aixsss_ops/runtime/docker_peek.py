"""One Engine API read without the docker SDK: a container's inspect data over the engine's unix socket.

The SDK's import (requests, urllib3) takes 0.14-0.2 s on a 2-core machine, longer than everything else a rollback
does before its switch. The switch's path needs only to know that the warm color's api container runs, so it
reads that here with ``http.client`` (which the probes import anyway); every other call goes through the SDK.
An engine that is not on a unix socket (tcp://, ssh://) is read through the SDK.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

from aixsss_ops.config import OpsConfig
from aixsss_ops.runtime.docker_engine import engine_host, unreachable


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


def socket_path(cfg: OpsConfig) -> str | None:
    """The engine's unix socket, or None when the engine is reached otherwise."""
    host = engine_host(cfg)
    return host[len("unix://"):] if host.startswith("unix://") else None


def inspect(cfg: OpsConfig, name: str) -> dict | None:
    """``GET /containers/{name}/json``: the container's inspect data, None when no container has that name.
    Raises ``LookupError`` when the engine is not on a unix socket or answers anything else (the caller asks
    the SDK, whose errors say more), ``ServiceUnavailable`` when the socket does not answer."""
    path = socket_path(cfg)
    if path is None:
        raise LookupError("the engine is not on a unix socket")
    conn = _UnixConnection(path, cfg.docker.timeout)
    try:
        conn.request("GET", f"/containers/{urllib.parse.quote(name, safe='')}/json")
        r = conn.getresponse()
        body = r.read()
    except OSError as e:
        raise unreachable(cfg, e) from None
    finally:
        conn.close()
    if r.status == 404:
        return None
    if r.status != 200:
        raise LookupError(f"the engine answered {r.status}")
    return json.loads(body)
