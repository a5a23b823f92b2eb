"""How the swarm runtime reads a service's state from its tasks: a failed task makes it BACKOFF at once only when
Swarm will not start another (restart condition "none"); otherwise after RETRIED_FAILURES failures since the
service changed, STARTING (with the failure said) before."""

from __future__ import annotations

from aixsss_ops.runtime.swarm import RETRIED_FAILURES, SwarmRuntime


class _Judge(SwarmRuntime):
    def __init__(self):  # no engine: the judge reads only the service and task documents given to it
        pass

    def nodes_up(self):
        return {"n1": "node1"}, {"n1"}


def _service(condition: str = "any", replicas: int = 1) -> dict:
    return {"Spec": {"Mode": {"Replicated": {"Replicas": replicas}},
                     "TaskTemplate": {"RestartPolicy": {"Condition": condition}}},
            "UpdatedAt": "2026-12-06T10:00:00.000000000Z"}


def _task(state: str, created: str, err: str = "") -> dict:
    return {"NodeID": "n1", "DesiredState": "shutdown" if state == "failed" else "running", "CreatedAt": created,
            "Status": {"State": state, "Err": err, "ContainerStatus": {"ExitCode": 1 if state == "failed" else 0}}}


def test_one_failure_of_a_restarted_service_is_starting_with_the_error_said():
    tasks = [_task("failed", "2026-12-06T10:00:01Z", "task: non-zero exit (1)"), _task("starting", "2026-12-06T10:00:03Z")]
    state, desc, _ = _Judge()._judge(_service(), tasks)
    assert state == "STARTING" and "non-zero exit (1)" in desc and "Swarm starts another" in desc


def test_repeated_failures_since_the_change_are_backoff():
    tasks = [_task("failed", f"2026-12-06T10:00:0{i}Z", "task: non-zero exit (1)") for i in range(1, RETRIED_FAILURES + 1)]
    state, desc, _ = _Judge()._judge(_service(), tasks)
    assert state == "BACKOFF" and f"{RETRIED_FAILURES} task(s) failed" in desc


def test_failures_before_the_change_do_not_count():
    tasks = [_task("failed", f"2026-12-06T09:59:0{i}Z") for i in range(1, 5)] + [_task("running", "2026-12-06T10:00:01Z")]
    assert _Judge()._judge(_service(), tasks)[0] == "RUNNING"
    assert _Judge()._judge(_service(), tasks[:4])[0] == "STARTING"


def test_one_failure_is_final_when_swarm_restarts_nothing():
    tasks = [_task("failed", "2026-12-06T10:00:01Z", "task: non-zero exit (1)")]
    assert _Judge()._judge(_service(condition="none"), tasks)[0] == "BACKOFF"
