"""An end-to-end check through the proxy: health, a provider profile, a job processed by the worker, its artifact."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from aixsss_ops.errors import CheckFailed, ServiceUnavailable
from aixsss_ops.poll import poll_until


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


def run(url: str, timeout: float = 60.0) -> SmokeResult:
    import httpx

    res = SmokeResult(url)
    t0 = time.monotonic()
    with httpx.Client(base_url=url, timeout=10.0) as http:
        try:
            h = http.get("/api/health")
        except httpx.HTTPError as e:
            raise ServiceUnavailable(f"proxy at {url} is unreachable: {e}") from None
        _expect(h, "GET /api/health")
        res.color, res.version = h.json().get("color"), h.json().get("version")
        res.steps.append(f"health: {res.color} {res.version}")
        _expect(http.get("/api/ready"), "GET /api/ready")
        res.steps.append("ready: postgres and redis reachable")
        p = http.post(
            "/api/ai-profiles",
            json={
                "name": f"smoke-{uuid.uuid4().hex[:8]}",
                "provider": "openai_compatible",
                "apiKey": "sk-smoke-" + uuid.uuid4().hex,
            },
        )
        _expect(p, "POST /api/ai-profiles")
        j = http.post(
            "/api/ai-jobs",
            json={"type": "llm_chat", "profileId": p.json()["id"], "input": {"prompt": "aixsss-ops smoke test"}},
        )
        _expect(j, "POST /api/ai-jobs")
        res.job_id = j.json()["id"]
        def job_ended():
            row = http.get(f"/api/ai-jobs/{res.job_id}")
            _expect(row, "GET /api/ai-jobs/{id}")
            res.job_status = row.json().get("status")
            return row if res.job_status in ("succeeded", "failed", "cancelled") else None

        row = poll_until(job_ended, timeout, interval=0.2)
        if row is None:
            raise CheckFailed(f"job {res.job_id} still {res.job_status} after {timeout:.0f}s: is a worker running?")
        if res.job_status != "succeeded":
            raise CheckFailed(f"job {res.job_id} ended {res.job_status}: {row.json().get('error')}")
        res.steps.append(f"job {res.job_id} succeeded")
        res.artifact_key = f"artifacts/{res.job_id}.json"
        _expect(http.get(f"/api/assets/{res.artifact_key}"), "GET the job's artifact")
        res.steps.append(f"artifact {res.artifact_key} readable")
    res.seconds = round(time.monotonic() - t0, 3)
    return res


def _expect(resp, what: str) -> None:
    if not 200 <= resp.status_code < 300:
        raise CheckFailed(f"{what} answered HTTP {resp.status_code}: {resp.text[:200]}")
