"""Connected workers, found BullMQ's way: CLIENT LIST filtered by the connection name workers set.

Node BullMQ names a worker's connections ``bull:<base64(queue)>`` (``…:w:<worker name>`` when
named); the Python package uses ``bull:<queue>`` with the same suffix. Like ``Queue.getWorkers()``
this lists connections, so one worker can appear more than once (its blocking connection too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aixsss_ops.errors import OpsError
from aixsss_ops.queue.conn import DEFAULT_TIMEOUT, connect
from aixsss_ops.queue.keys import DEFAULT_PREFIX, QueueKeys


@dataclass
class WorkerInfo:
    id: str
    addr: str
    name: str | None  # the worker's own name (the ``:w:<name>`` suffix), None when unnamed
    client_name: str
    flavor: str  # "node" (base64 queue name) or "python"
    age_s: int
    idle_s: int
    cmd: str

    def to_dict(self) -> dict:
        return asdict(self)


def parse_client_list(text: str) -> list[dict[str, str]]:
    clients = []
    for line in text.splitlines():
        if not line.strip():
            continue
        c = {}
        for kv in line.split(" "):
            key, sep, value = kv.partition("=")
            if sep:
                c[key] = value
        clients.append(c)
    return clients


def match_workers(clients: list[dict], queue: str, prefix: str = DEFAULT_PREFIX) -> list[WorkerInfo]:
    """BullMQ's matcher: ``name == base`` or ``name.startswith(base + ':w:')``, for both base spellings."""
    node_base, py_base = QueueKeys(queue, prefix).client_names()
    out = []
    for c in clients:
        name = c.get("name") or ""
        for base, flavor in ((node_base, "node"), (py_base, "python")):
            if name == base or name.startswith(f"{base}:w:"):
                worker_name = (name[len(base) + 3:] or None) if name != base else None
                out.append(WorkerInfo(
                    id=c.get("id", ""), addr=c.get("addr", ""), name=worker_name,
                    client_name=name, flavor=flavor, age_s=int(c.get("age", 0) or 0), idle_s=int(c.get("idle", 0) or 0),
                    cmd=c.get("cmd", ""),
                ))
                break
    return out


def read_workers(r, queue: str, prefix: str = DEFAULT_PREFIX) -> list[WorkerInfo]:
    import redis

    try:
        raw = r.execute_command("CLIENT", "LIST")
    except redis.ResponseError as e:
        raise OpsError(f"cannot list Redis clients (CLIENT LIST): {e}",
                       hint="some managed Redis services disable CLIENT LIST; workers cannot be discovered there") from None
    if isinstance(raw, list):  # redis-py may already parse it
        clients = [{k: str(v) for k, v in c.items()} for c in raw]
    else:
        clients = parse_client_list(raw if isinstance(raw, str) else raw.decode())
    return match_workers(clients, queue, prefix)


def workers(redis_url: str, queue: str, *, prefix: str = DEFAULT_PREFIX,
            timeout: float = DEFAULT_TIMEOUT) -> list[WorkerInfo]:
    with connect(redis_url, timeout) as r:
        return read_workers(r, queue, prefix)
