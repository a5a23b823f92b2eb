"""An end-to-end check through the proxy: health, the web page, readiness, a provider profile, a job processed by
the worker, its artifact. What the app does not offer (a route answering 404) is skipped and said in ``notes``;
everything it offers must work."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aixsss_ops.errors import CheckFailed, ServiceUnavailable
from aixsss_ops.poll import poll_until

if TYPE_CHECKING:
    from aixsss_ops.queue.conn import QueueTarget


@dataclass
class SmokeResult:
    url: str
    color: str | None = None
    version: str | None = None
    job_id: str | None = None
    job_status: str | None = None
    artifact_key: str | None = None
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the app does not offer, so was not checked


def run(url: str, timeout: float = 60.0, queue: QueueTarget | None = None) -> SmokeResult:
    """``queue``: where the app's jobs go, asked why when the smoke job is not taken (a paused queue)."""
    import httpx

    res = SmokeResult(url)
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as http:
        try:
            h = http.get("/api/health")
        except httpx.HTTPError as e:
            raise ServiceUnavailable(f"proxy at {url} is unreachable: {e}") from None
        _expect(h, "GET /api/health")
        body = _json(h)
        res.color, res.version = body.get("color"), body.get("version")
        res.steps.append("health through the proxy" + (f": {res.color} {res.version}" if res.color else ""))
        page = http.get("/")
        _expect(page, "GET / (the web build)")
        res.steps.append(f"web page: {len(page.content)} bytes")
        if _offered(http.get("/api/ready"), "GET /api/ready", res, "readiness route"):
            res.steps.append("ready: postgres and redis reachable")
        p = http.post("/api/ai-profiles", json={"name": f"smoke-{uuid.uuid4().hex[:8]}",
                                                "provider": "openai_compatible",
                                                "apiKey": "sk-smoke-" + uuid.uuid4().hex})
        profile = _json(p).get("id") if _offered(p, "POST /api/ai-profiles", res, "provider profiles") else None
        job = {"type": "llm_chat", "input": {"prompt": "aixsss-ops smoke test"}}
        j = http.post("/api/ai-jobs", json={**job, **({"profileId": profile} if profile else {})})
        if not _offered(j, "POST /api/ai-jobs", res, "jobs: the worker's ready signal stands for it"):
            res.seconds = round(time.monotonic() - t0, 3)
            return res
        res.job_id = _json(j)["id"]

        def job_ended():
            row = http.get(f"/api/ai-jobs/{res.job_id}")
            _expect(row, "GET /api/ai-jobs/{id}")
            res.job_status = _json(row).get("status")
            return row if res.job_status in ("succeeded", "failed", "cancelled") else None

        row = poll_until(job_ended, timeout, interval=0.2)
        if row is None:
            still = f"job {res.job_id} still {res.job_status} after {timeout:.0f}s"
            if queue is not None and _paused(queue):
                raise CheckFailed(f"{still}: the queue '{queue.queue}' is paused, so no worker takes it",
                                  hint="resume it: aixsss-ops queue resume")
            raise CheckFailed(f"{still}: is a worker running?")
        if res.job_status != "succeeded":
            raise CheckFailed(f"job {res.job_id} ended {res.job_status}: {_json(row).get('error')}")
        res.steps.append(f"job {res.job_id} succeeded")
        key = f"artifacts/{res.job_id}.json"
        if _offered(http.get(f"/api/assets/{key}"), "GET the job's artifact", res, "artifacts of jobs"):
            res.artifact_key = key
            res.steps.append(f"artifact {key} readable")
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def _paused(queue: QueueTarget) -> bool:
    """Whether ``queue`` is paused (BullMQ's meta hash); False when Redis cannot say."""
    from aixsss_ops.queue.conn import connect
    from aixsss_ops.queue.control import read_state
    from aixsss_ops.queue.keys import QueueKeys

    try:
        with connect(queue.redis_url, timeout=3) as r:
            return read_state(r, QueueKeys(queue.queue)).paused
    except Exception:  # noqa: BLE001 - best effort: without an answer the message stays the general one
        return False


def _json(resp) -> dict:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _offered(resp, what: str, res: SmokeResult, feature: str) -> bool:
    """True when the route answered 2xx; a 404 means the app has no such route: noted, not a failure."""
    if resp.status_code == 404:
        res.notes.append(f"not checked: {what} answered 404 (the app offers no {feature})")
        return False
    _expect(resp, what)
    return True


def _expect(resp, what: str) -> None:
    if not 200 <= resp.status_code < 300:
        raise CheckFailed(f"{what} answered HTTP {resp.status_code}: {resp.text[:200]}")
