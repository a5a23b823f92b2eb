"""The Engine API calls of a rollback without the docker SDK, over the engine's unix socket with ``http.client``.

The SDK's import (requests, urllib3) takes 0.14-0.2 s on a 2-core machine, longer than everything else a rollback
does. A rollback needs only these calls: a container's inspect data (is the warm api running), the project's
containers (which processes each color has) and a start or stop sent without waiting for the engine to finish
it; every other call goes through the SDK. Each raises ``LookupError`` when the engine is not on a unix socket
(tcp://, ssh://) or answers what the caller should leave to the SDK, whose errors say more.
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


def _call(cfg: OpsConfig, method: str, url: str, answer_within: float | None = None) -> tuple[int, bytes] | None:
    """(status, body) of one request; None when ``answer_within`` seconds passed after it was sent without an
    answer (the engine carries the request out whether or not anyone still listens). ``ServiceUnavailable`` when
    the socket does not answer."""
    path = socket_path(cfg)
    if path is None:
        raise LookupError("the engine is not on a unix socket")
    conn = _UnixConnection(path, cfg.docker.timeout)
    try:
        conn.request(method, url)
        if answer_within is not None:
            conn.sock.settimeout(answer_within)
        try:
            r = conn.getresponse()
        except TimeoutError:
            if answer_within is None:
                raise
            return None
        return r.status, r.read()
    except OSError as e:
        raise unreachable(cfg, e) from None
    finally:
        conn.close()


def _path(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def inspect(cfg: OpsConfig, name: str) -> dict | None:
    """``GET /containers/{name}/json``: the container's inspect data, None when no container has that name."""
    status, body = _call(cfg, "GET", f"/containers/{_path(name)}/json")
    if status == 404:
        return None
    if status != 200:
        raise LookupError(f"the engine answered {status}")
    return json.loads(body)


def containers(cfg: OpsConfig, labels: list[str]) -> list[dict]:
    """The inspect data of every container (running or not) carrying all of ``labels`` (``key=value``), as the
    SDK's listing gives it: one listing, then one inspect each (a container removed in between is left out)."""
    query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": labels})})
    status, body = _call(cfg, "GET", f"/containers/json?{query}")
    if status != 200:
        raise LookupError(f"the engine answered {status}")
    found = (inspect(cfg, c["Id"]) for c in json.loads(body))
    return [attrs for attrs in found if attrs is not None]


def post_unanswered(cfg: OpsConfig, name: str, action: str, params: dict | None = None) -> int | None:
    """``POST /containers/{name}/{action}`` (``start``, ``stop``) without waiting for the engine to carry it out:
    the status of an answer within 20 ms (204 done, 304 done already, 404 no such container), None when the
    request is under way. Any other status raises ``LookupError``."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    got = _call(cfg, "POST", f"/containers/{_path(name)}/{action}{query}", answer_within=0.02)
    if got is None:
        return None
    if got[0] not in (204, 304, 404):
        raise LookupError(f"the engine answered {got[0]}: {got[1][:200].decode(errors='replace')}")
    return got[0]
